/* Private to registry/source*.c: pieces shared by the local and network sources. */
#ifndef OWL_REGISTRY_SOURCE_INTERNAL_H
#define OWL_REGISTRY_SOURCE_INTERNAL_H

#include "registry.h"

int registry_is_archive_name(const char *path);
/* A model name derived from a path or URL; caller frees. */
char *registry_default_name(const char *path);
/* Extracts an archive into the stage, refusing unsafe entries. */
int registry_stage_extract(registry_stage *st, const char *archive_path, const char *label,
			   owl_err *err);

/* When every staged file sits under one top folder, makes that folder the root. */
int registry_stage_strip_top(registry_stage *st, owl_err *err);

/* The options every owl HTTP request shares (TLS, timeouts, user agent). */
#include <curl/curl.h>
void registry_curl_defaults(CURL *e, const registry_fetch_opts *o, char *errbuf);
/* curl_global_init, once per process (registry/fetch.c). */
void registry_curl_global_init(void);

int registry_stage_from_url(registry_store *s, const char *url, const registry_source_opts *o,
			    registry_stage **out, owl_err *err);
int registry_stage_from_hub(registry_store *s, const char *source, const registry_source_opts *o,
			    registry_stage **out, owl_err *err);

#endif
