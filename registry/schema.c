/* The registry's schema steps. Append new steps; never edit a released one. */
#include "registry.h"

static const char *const steps[] = {
	/* 1: models, versions, files, blobs, tags */
	"CREATE TABLE models ("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE,"
	"  created_at INTEGER NOT NULL);"
	"CREATE TABLE blobs ("
	"  digest TEXT PRIMARY KEY,"          /* sha256 hex */
	"  size INTEGER NOT NULL,"
	"  created_at INTEGER NOT NULL);"
	"CREATE TABLE versions ("
	"  id INTEGER PRIMARY KEY,"
	"  model_id INTEGER NOT NULL REFERENCES models(id),"
	"  version INTEGER NOT NULL,"         /* 1, 2, 3 ... per model */
	"  source TEXT NOT NULL,"             /* what the user pulled, token-free */
	"  revision TEXT,"                    /* commit the source resolved to, if any */
	"  format TEXT NOT NULL,"             /* hf | gguf | safetensors | adapter */
	"  parent_version_id INTEGER REFERENCES versions(id)," /* derived versions */
	"  config_json TEXT,"                 /* summary: architecture, params, dtype, ctx */
	"  total_bytes INTEGER NOT NULL DEFAULT 0,"
	"  created_at INTEGER NOT NULL,"
	"  UNIQUE (model_id, version));"
	"CREATE TABLE version_files ("
	"  version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,"
	"  path TEXT NOT NULL,"               /* relative path inside the checkpoint */
	"  digest TEXT NOT NULL REFERENCES blobs(digest),"
	"  size INTEGER NOT NULL,"
	"  expected_digest TEXT,"             /* what the source promised, if anything */
	"  PRIMARY KEY (version_id, path));"
	"CREATE INDEX version_files_digest ON version_files(digest);"
	"CREATE TABLE tags ("
	"  model_id INTEGER NOT NULL REFERENCES models(id),"
	"  tag TEXT NOT NULL,"
	"  version_id INTEGER NOT NULL REFERENCES versions(id),"
	"  updated_at INTEGER NOT NULL,"
	"  PRIMARY KEY (model_id, tag));"
	"CREATE TABLE tag_history ("
	"  id INTEGER PRIMARY KEY,"
	"  model_id INTEGER NOT NULL REFERENCES models(id),"
	"  tag TEXT NOT NULL,"
	"  old_version_id INTEGER,"
	"  new_version_id INTEGER,"
	"  at INTEGER NOT NULL);",
};

int registry_schema_migrate(registry_store *s, owl_err *err)
{
	return registry_store_migrate(s, REGISTRY_SCHEMA_MODULE, steps,
				      (int)(sizeof steps / sizeof steps[0]), err);
}
