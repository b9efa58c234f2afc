/* Which kernel path the CPU backend runs: chosen once per process from the
 * CPU's features, or forced with OWL_CPU_PATH so that every path this CPU
 * can run is testable on it.
 *
 *   avx512vnni  integer kernels with AVX-512 VNNI, float kernels with AVX-512
 *   avx512      integer kernels with AVX2 (maddubs), float kernels with AVX-512
 *   avxvnni     integer kernels with AVX-VNNI (256-bit vpdpbusd), float AVX2/FMA
 *   avx2        integer kernels with AVX2 (maddubs), float kernels with AVX2/FMA
 *
 * AVX2, FMA and F16C are the build's baseline (-march=x86-64-v3); the other
 * paths' code is compiled with target attributes and only called when
 * chosen here. OWL_NO_AVX512=1 picks the best path without AVX-512 (what an
 * AVX2 server runs). A path this CPU lacks is never run: the best supported
 * one runs instead, and every matmul reports the bad request (cpu_path_check)
 * so the caller sees it at first use. */
#include "engine/kernels/cpu/cpu.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static const char *const path_names[CPU_PATH_COUNT] = {"avx2", "avxvnni", "avx512", "avx512vnni"};

static struct {
	pthread_once_t once;
	cpu_path path;
	int supported[CPU_PATH_COUNT];
	int int_kernels;  /* 0 when OWL_NO_QGEMM asks for the exact f32 path */
	char bad[64];     /* an OWL_CPU_PATH that could not be honoured, or "" */
	int bad_unknown;  /* it named no path at all */
} state = {.once = PTHREAD_ONCE_INIT};

static void choose(void)
{
	__builtin_cpu_init();
	int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
		     __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
	state.supported[CPU_PATH_AVX2] = 1; /* the build's baseline */
	state.supported[CPU_PATH_AVXVNNI] = __builtin_cpu_supports("avxvnni");
	state.supported[CPU_PATH_AVX512] = avx512;
	state.supported[CPU_PATH_AVX512VNNI] = avx512 && __builtin_cpu_supports("avx512vnni");
	state.int_kernels = !getenv("OWL_NO_QGEMM");

	int top = CPU_PATH_COUNT - 1;
	if (getenv("OWL_NO_AVX512"))
		top = CPU_PATH_AVXVNNI;
	state.path = CPU_PATH_AVX2;
	for (int p = top; p >= 0; p--)
		if (state.supported[p]) {
			state.path = (cpu_path)p;
			break;
		}
	const char *want = getenv("OWL_CPU_PATH");
	if (!want || !*want)
		return;
	for (int p = 0; p < CPU_PATH_COUNT; p++)
		if (strcmp(want, path_names[p]) == 0) {
			if (state.supported[p])
				state.path = (cpu_path)p;
			else
				snprintf(state.bad, sizeof state.bad, "%s", want);
			return;
		}
	snprintf(state.bad, sizeof state.bad, "%s", want);
	state.bad_unknown = 1;
}

cpu_path cpu_path_get(void)
{
	pthread_once(&state.once, choose);
	return state.path;
}

const char *cpu_path_name(cpu_path p)
{
	return p >= 0 && p < CPU_PATH_COUNT ? path_names[p] : "?";
}

int cpu_path_supported(cpu_path p)
{
	pthread_once(&state.once, choose);
	return p >= 0 && p < CPU_PATH_COUNT && state.supported[p];
}

int cpu_path_check(owl_err *err)
{
	pthread_once(&state.once, choose);
	if (!state.bad[0])
		return 0;
	char list[64] = "";
	for (int p = CPU_PATH_COUNT - 1; p >= 0; p--)
		if (state.supported[p])
			snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", list[0] ? ", " : "",
				 path_names[p]);
	return owl_err_set(err, OWL_EUSAGE, "cannot use OWL_CPU_PATH=%s: %s (this CPU runs: %s)",
			   state.bad,
			   state.bad_unknown ? "no such kernel path (avx512vnni, avx512, avxvnni, avx2)"
					     : "this CPU lacks its instructions",
			   list);
}

int cpu_int_kernels(void)
{
	pthread_once(&state.once, choose);
	return state.int_kernels;
}

int cpu_has_avx512(void)
{
	return cpu_path_get() >= CPU_PATH_AVX512;
}

int cpu_has_vnni(void)
{
	return cpu_path_get() == CPU_PATH_AVX512VNNI && cpu_int_kernels();
}
