/* What the deploy module's files share and nobody else needs. */
#ifndef OWL_DEPLOY_INTERNAL_H
#define OWL_DEPLOY_INTERNAL_H

#include "deploy.h"

/* Opens home's store for the server's callbacks: read-only where the home
 * is not writable, with the licenses' and deploy's schemas applied. */
int deploy_open_for_server(const char *home, const char *verb, registry_store **out,
			   owl_err *err);

#endif
