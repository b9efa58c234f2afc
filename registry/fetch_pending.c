/* Placeholder until registry/fetch.c and registry/hub.c (libcurl downloads
 * and the hub client) are merged: every network source fails with a clear
 * message. Delete this file in the commit that adds them. */
#include "registry.h"

int registry_fetch_files(const registry_fetch_opts *opts, registry_fetch_file *files, size_t n,
			 owl_err *err)
{
	return owl_err_set(err, OWL_EFAIL, "downloads are not available in this build yet");
}

void registry_fetch_file_release(registry_fetch_file *f)
{
}

int registry_hub_list(const registry_fetch_opts *opts, const char *endpoint, const char *repo,
		      const char *revision, registry_hub_listing *out, owl_err *err)
{
	return owl_err_set(err, OWL_EFAIL, "hub sources are not available in this build yet");
}

char *registry_hub_file_url(const char *endpoint, const char *repo, const char *revision,
			    const char *path)
{
	return NULL;
}

void registry_hub_listing_release(registry_hub_listing *l)
{
}
