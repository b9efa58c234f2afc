/* owl status: where things are and what this machine can do. */
#include "cmd.h"
#include "engine/engine.h"
#include "registry/registry.h"

#include <jansson.h>
#include <string.h>
#include <unistd.h>

static void cpu_features(char *out, size_t n)
{
	static const struct { const char *name; int on; } *fp, feats[] = {
		{"sse4.2", 0}, {"avx", 0}, {"avx2", 0}, {"fma", 0}, {"f16c", 0},
		{"avx512f", 0}, {"avx512bw", 0}, {"avx512vnni", 0}, {"avx512bf16", 0},
	};
	(void)fp;
	__builtin_cpu_init();
	int on[9] = {
		__builtin_cpu_supports("sse4.2"), __builtin_cpu_supports("avx"),
		__builtin_cpu_supports("avx2"), __builtin_cpu_supports("fma"),
		__builtin_cpu_supports("f16c"), __builtin_cpu_supports("avx512f"),
		__builtin_cpu_supports("avx512bw"), __builtin_cpu_supports("avx512vnni"),
		__builtin_cpu_supports("avx512bf16"),
	};
	out[0] = 0;
	for (size_t i = 0; i < sizeof feats / sizeof feats[0]; i++)
		if (on[i]) {
			size_t l = strlen(out);
			snprintf(out + l, n - l, "%s%s", l ? " " : "", feats[i].name);
		}
}

static int run_status(owl_ctx *ctx, int argc, char **argv)
{
	if (argc > 1)
		return cmd_usage_error("status", "unexpected argument '%s'", argv[1]);
	owl_err err = {0};
	registry_store *s = NULL;
	if (registry_store_open(ctx->home, &s, &err))
		return cmd_fail(&err);
	registry_store_counts n;
	int schema;
	if (registry_store_stats(s, &n, &err) ||
	    registry_store_schema_version(s, REGISTRY_SCHEMA_MODULE, &schema, &err)) {
		registry_store_close(s);
		return cmd_fail(&err);
	}
	int64_t free_bytes = owl_disk_free(ctx->home);
	char feats[256];
	cpu_features(feats, sizeof feats);
	engine_gpu_info gpu;
	engine_gpu_probe(&gpu);
	int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);

	if (ctx->json) {
		json_t *o = json_object();
		json_object_set_new(o, "version", json_string(OWL_VERSION));
		json_object_set_new(o, "home", json_string(registry_store_home(s)));
		json_object_set_new(o, "database", json_string(registry_store_db_path(s)));
		json_object_set_new(o, "schema_version", json_integer(schema));
		json_object_set_new(o, "models", json_integer((json_int_t)n.models));
		json_object_set_new(o, "versions", json_integer((json_int_t)n.versions));
		json_object_set_new(o, "blobs", json_integer((json_int_t)n.blobs));
		json_object_set_new(o, "blob_bytes", json_integer((json_int_t)n.blob_bytes));
		json_object_set_new(o, "disk_free_bytes", json_integer(free_bytes));
		json_object_set_new(o, "cpu_cores", json_integer(cores));
		json_object_set_new(o, "cpu_features", json_string(feats));
		json_t *g = json_object();
		json_object_set_new(g, "cuda_backend_loaded", json_boolean(gpu.backend_loaded));
		json_object_set_new(g, "cuda_devices", json_integer(gpu.device_count));
		json_object_set_new(g, "cuda_usable", json_boolean(gpu.device_count > 0));
		json_object_set_new(g, "nccl_usable", json_boolean(gpu.device_count > 0 && gpu.nccl_version > 0));
		json_object_set_new(g, "nccl_version", json_integer(gpu.nccl_version));
		json_object_set_new(g, "detail", json_string(gpu.detail));
		json_object_set_new(o, "gpu", g);
		cmd_print_json(o);
	} else {
		char sbytes[32], sfree[32];
		owl_fmt_bytes(n.blob_bytes, sbytes, sizeof sbytes);
		owl_fmt_bytes(free_bytes > 0 ? (uint64_t)free_bytes : 0, sfree, sizeof sfree);
		printf("owl %s\n", OWL_VERSION);
		printf("home:       %s\n", registry_store_home(s));
		printf("database:   %s (schema %d)\n", registry_store_db_path(s), schema);
		printf("models:     %llu (%llu versions)\n", (unsigned long long)n.models,
		       (unsigned long long)n.versions);
		printf("blobs:      %llu (%s)\n", (unsigned long long)n.blobs, sbytes);
		printf("disk free:  %s\n", free_bytes >= 0 ? sfree : "unknown");
		printf("cpu:        %d cores, %s\n", cores, feats[0] ? feats : "baseline x86-64");
		if (gpu.device_count > 0)
			printf("cuda:       yes, %d device(s): %s\n", gpu.device_count, gpu.detail);
		else
			printf("cuda:       no (%s)\n", gpu.detail[0] ? gpu.detail : "no device");
		if (gpu.device_count > 0 && gpu.nccl_version > 0)
			printf("nccl:       yes, version %d\n", gpu.nccl_version);
		else
			printf("nccl:       no\n");
	}
	registry_store_close(s);
	return OWL_OK;
}

const owl_command cmd_status_commands[] = {
	{"status", run_status, "show the data home, store size, CPU features and GPU availability",
	 "USAGE\n"
	 "  owl status [--json]\n"
	 "\n"
	 "Shows the data home and its database schema version, how many blobs the\n"
	 "store holds and their size, free disk space, the CPU's vector features, and\n"
	 "whether a CUDA device and NCCL are usable (a machine without a GPU says no).\n"
	 "\n"
	 "EXAMPLES\n"
	 "  owl status\n"
	 "  owl --home /var/lib/owl status --json\n"},
	{0},
};
