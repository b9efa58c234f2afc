/* Integer kernels for Q8_0/Q4_0/Q4_1 on 256-bit vectors, for CPUs without
 * AVX-512 VNNI: the file's layout for prompts (2 rows x 4 tokens per tile)
 * and the 16-row groups of repack.c for prompts and decoding (8 rows per
 * vector, 4 tokens per tile). int256.h holds them once; they are compiled
 * here twice, with AVX2 alone and with AVX-VNNI, and cpupath.c decides which
 * copy runs. Activations are the same Q8 blocks (qact) as on AVX-512, so
 * every path rounds prompts and decoding alike. */
#include "engine/kernels/cpu/cpu.h"

#include <immintrin.h>
#include <string.h>

enum { Q256_RM = 2, Q256_RN = 4, Q256_CHUNK = 128, G256_TN = 4 };
/* Kinds of integer group: Q4_0, Q8_0, Q4_1 (16 mins after the scales). */
enum { K256_Q4_0, K256_Q8_0, K256_Q4_1 };

#define I256_VNNI 0
#define I256_SUFFIX _avx2
#include "engine/kernels/cpu/int256.h"
#undef I256_VNNI
#undef I256_SUFFIX

/* Everything below may use AVX-VNNI; cpupath.c calls it only on CPUs that have it. */
#pragma GCC push_options
#pragma GCC target("avxvnni")
#define I256_VNNI 1
#define I256_SUFFIX _avxvnni
#include "engine/kernels/cpu/int256.h"
#undef I256_VNNI
#undef I256_SUFFIX
#pragma GCC pop_options
