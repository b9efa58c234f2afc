/* The CUDA backend against the CPU backend, op by op, as ggml's
 * test-backend-ops holds its backends to the CPU: the same random inputs
 * on both, the outputs compared by normalised mean squared error with a
 * tolerance by the precision the CUDA path computes in (f32 through
 * cuBLAS, activations rounded to 16 bits for the f16/bf16/quantised GEMMs).
 *
 * Without a device it still checks what a machine without one can: that
 * libowl_cuda.so loads, exports every entry point, refuses a program of
 * another kernel interface, and says which device or driver is missing.
 * Device tests then print "SKIP name: no CUDA device" (not counted).
 * tests/run.sh also runs the device tests against the host emulator of CUDA
 * (OWL_CUDA_LIB=$BUILD/libowl_cuda_emu.so, tests/cuda-emu/), which runs the
 * same kernel sources on host threads. */
#include "test.h"

#include <dlfcn.h>
#include <omp.h>
#include <stdint.h>
#include <unistd.h>

#include "engine/engine.h"
#include "engine/kernels/kernels.h"

static kernels_backend *cpu, *gpu;
static int gpu_count; /* CUDA devices, from the probe */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) /* [-1, 1) */
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static int irand(int n) { return (int)((frand() + 1.0f) * 0.5f * n) % n; }

static uint16_t to_f16(float f)
{
	uint32_t b;
	memcpy(&b, &f, 4);
	uint32_t sign = (b >> 16) & 0x8000;
	int exp = (int)((b >> 23) & 0xff) - 127 + 15;
	uint32_t mant = b & 0x7fffff;
	if (exp <= 0)
		return (uint16_t)sign;
	if (exp >= 31)
		return (uint16_t)(sign | 0x7c00);
	return (uint16_t)(sign | ((uint32_t)exp << 10) | (mant >> 13));
}

static float *frandv(size_t n, float scale)
{
	float *v = malloc(n * sizeof *v + 1);
	for (size_t i = 0; i < n; i++)
		v[i] = frand() * scale;
	return v;
}

/* ---- device memory for the tests ------------------------------------------ */

enum { MAX_BUFS = 256 };
static struct {
	kernels_buffer *b;
	uint8_t *p;
	size_t n;
} bufs[MAX_BUFS];
static int nbufs;

static void *dalloc(size_t bytes)
{
	owl_err err = {0};
	kernels_buffer *b;
	void *p;
	if (nbufs == MAX_BUFS || kernels_alloc(gpu, bytes, &b, &p, &err)) {
		printf("FAIL %s: cannot allocate %zu bytes on the device: %s\n", test_current_name, bytes,
		       err.msg);
		exit(1);
	}
	bufs[nbufs].b = b, bufs[nbufs].p = p, bufs[nbufs].n = bytes;
	nbufs++;
	CHECK_INT(gpu->iface->fill_zero(gpu, p, bytes, &err), 0);
	return p;
}

static void *dput(const void *host, size_t bytes)
{
	owl_err err = {0};
	void *p = dalloc(bytes);
	CHECK(gpu->iface->copy_to_device(gpu, bufs[nbufs - 1].b, 0, host, bytes, &err) == 0,
	      "copy_to_device: %s", err.msg);
	return p;
}

static void dget(void *host, const void *dev, size_t bytes)
{
	owl_err err = {0};
	const uint8_t *d = dev;
	for (int i = 0; i < nbufs; i++)
		if (d >= bufs[i].p && d + bytes <= bufs[i].p + bufs[i].n) {
			CHECK(gpu->iface->copy_to_host(gpu, host, bufs[i].b, (size_t)(d - bufs[i].p), bytes,
						       &err) == 0, "copy_to_host: %s", err.msg);
			return;
		}
	CHECK(0, "no device buffer holds %p", dev);
}

static void dfree_all(void)
{
	for (int i = 0; i < nbufs; i++)
		gpu->iface->buffer_free(gpu, bufs[i].b);
	nbufs = 0;
}

/* Waits for the device and reports what it found (a fault, a flagged id). */
static void dsync(const char *what)
{
	owl_err err = {0};
	CHECK(gpu->iface->synchronize(gpu, &err) == 0, "%s: synchronize: %s", what, err.msg);
}

/* ---- comparison ------------------------------------------------------------ */

/* sum (a - b)^2 / sum b^2: the error relative to the reference's size. */
static double nmse(const float *got, const float *want, size_t n)
{
	double e = 0, s = 0;
	for (size_t i = 0; i < n; i++) {
		double d = (double)got[i] - want[i];
		if (!(d == d))
			return INFINITY; /* NaN */
		e += d * d;
		s += (double)want[i] * want[i];
	}
	return s > 0 ? e / s : e;
}

/* got within tol of want (nmse), the message naming the case. */
#define CLOSE(got, want, n, tol, fmt, ...)                                                \
	do {                                                                              \
		double e_ = nmse(got, want, n);                                           \
		CHECK(e_ <= (tol), "nmse %g > %g: " fmt, e_, (double)(tol), __VA_ARGS__); \
	} while (0)

/* Device results copied back into a host array of n floats. */
static float *back(const float *dev, size_t n)
{
	float *h = malloc(n * sizeof *h + 1);
	dget(h, dev, n * sizeof *h);
	return h;
}

/* ---- weights of every type ------------------------------------------------- */

static const kernels_dtype all_types[] = {KERNELS_F32,  KERNELS_F16,  KERNELS_BF16,
					  KERNELS_Q8_0, KERNELS_Q4_0, KERNELS_Q4_1,
					  KERNELS_Q4_K, KERNELS_Q6_K};
enum { NTYPES = sizeof all_types / sizeof all_types[0] };

/* rows x cols random weights of type t in the stored layout: every code of
 * the quantised types, with finite scales. */
static uint8_t *make_weight(kernels_dtype t, int rows, int cols, kernels_weight *w)
{
	size_t rb = kernels_row_bytes(t, cols);
	uint8_t *d = malloc((size_t)rows * rb);
	for (int r = 0; r < rows; r++) {
		uint8_t *p = d + (size_t)r * rb;
		for (size_t i = 0; i < rb; i++)
			p[i] = (uint8_t)irand(256);
		uint16_t h;
		switch (t) {
		case KERNELS_F32:
			for (int c = 0; c < cols; c++) {
				float v = frand();
				memcpy(p + 4 * c, &v, 4);
			}
			break;
		case KERNELS_F16:
			for (int c = 0; c < cols; c++) {
				h = to_f16(frand());
				memcpy(p + 2 * c, &h, 2);
			}
			break;
		case KERNELS_BF16:
			for (int c = 0; c < cols; c++) {
				float v = frand();
				uint32_t b;
				memcpy(&b, &v, 4);
				h = (uint16_t)(b >> 16);
				memcpy(p + 2 * c, &h, 2);
			}
			break;
		case KERNELS_Q8_0:
		case KERNELS_Q4_0:
		case KERNELS_Q4_1: {
			size_t bb = t == KERNELS_Q8_0 ? 34 : t == KERNELS_Q4_0 ? 18 : 20;
			for (size_t b = 0; b < rb; b += bb) {
				h = to_f16(0.01f + 0.02f * (frand() + 1));
				memcpy(p + b, &h, 2);
				if (t == KERNELS_Q4_1) {
					h = to_f16(frand() * 0.3f);
					memcpy(p + b + 2, &h, 2);
				}
			}
			break;
		}
		case KERNELS_Q4_K:
			for (size_t b = 0; b < rb; b += 144) {
				h = to_f16(0.003f);
				memcpy(p + b, &h, 2);
				h = to_f16(0.002f);
				memcpy(p + b + 2, &h, 2);
			}
			break;
		case KERNELS_Q6_K:
			for (size_t b = 0; b < rb; b += 210) {
				h = to_f16(0.0005f);
				memcpy(p + b + 208, &h, 2);
			}
			break;
		}
	}
	*w = (kernels_weight){.type = t, .data = d, .rows = rows, .cols = cols, .row_bytes = rb};
	return d;
}

/* w on the device (weight_prepare: an upload); *owned to free. */
static kernels_weight to_gpu(const kernels_weight *w, kernels_buffer **owned)
{
	owl_err err = {0};
	kernels_weight g;
	int rc = gpu->iface->weight_prepare(gpu, w, 0, &g, owned, &err);
	CHECK(rc == 0, "weight_prepare %s %dx%d: %s", kernels_dtype_name(w->type), w->rows, w->cols,
	      err.msg);
	if (rc)
		memset(&g, 0, sizeof g);
	return g;
}

static kernels_scratch cpu_mb_scratch(int n, int cols)
{
	size_t f = kernels_matmul_backward_scratch(n, cols, omp_get_max_threads());
	return (kernels_scratch){.data = malloc(f * sizeof(float) + 1), .n = f};
}

/* The tolerance of the CUDA product of type t on n tokens: exact f32 for
 * f32 weights and the quantised vector kernel (n <= 8); activations
 * rounded to f16 or bf16 on the GEMM paths. */
static double mm_tol(kernels_dtype t, int n)
{
	if (t == KERNELS_F32 || (t >= KERNELS_Q8_0 && n <= 8))
		return 1e-10;
	return t == KERNELS_BF16 ? 3e-5 : 3e-6;
}

/* ---- the tests without a device --------------------------------------------- */

static const char *const entry_points[] = {
	"owl_cuda_probe",	    "owl_cuda_backend_new",	     "owl_cuda_nccl_comm_new",
	"owl_cuda_nccl_unique_id", "owl_cuda_nccl_comm_init_rank", "owl_cuda_nccl_comm_free",
	"owl_cuda_host_dequant_row",
};

static void object_loads_and_exports(void)
{
	owl_err err = {0};
	void *h = engine_cuda_open(&err);
	CHECK(h != NULL, "libowl_cuda.so does not load: %s", err.msg);
	if (!h)
		return;
	for (size_t i = 0; i < sizeof entry_points / sizeof entry_points[0]; i++)
		CHECK(dlsym(h, entry_points[i]) != NULL, "libowl_cuda.so lacks %s", entry_points[i]);
	/* the kernels' own symbols stay inside the object */
	CHECK(dlsym(h, "cu_matmul") == NULL, "libowl_cuda.so exports its internal cu_matmul");
}

static void other_interface_refused(void)
{
	owl_err err = {0};
	void *h = engine_cuda_open(&err);
	if (!h)
		return;
	int (*make)(int, int, kernels_backend **, owl_err *) =
		(int (*)(int, int, kernels_backend **, owl_err *))dlsym(h, "owl_cuda_backend_new");
	if (!make)
		return;
	kernels_backend *be = (kernels_backend *)1;
	CHECK(make(KERNELS_ABI_VERSION - 1, 0, &be, &err) != 0, "a table of another interface was "
	      "made");
	CHECK(be == NULL, "out was left set on failure");
	CHECK(strstr(err.msg, "version") != NULL, "the refusal does not name the version: %s", err.msg);
}

/* The element reader every CUDA kernel decodes weights with (cu_elem),
 * run on the host through the object: for every type, random blocks (all
 * codes, scales and mins), it gives the host's dequantisation exactly, or
 * within the rounding of a fused multiply-add. */
static void device_reader_matches_host(void)
{
	owl_err err = {0};
	void *h = engine_cuda_open(&err);
	if (!h)
		return;
	int (*dq)(int, const uint8_t *, int, float *) =
		(int (*)(int, const uint8_t *, int, float *))dlsym(h, "owl_cuda_host_dequant_row");
	CHECK(dq != NULL, "no owl_cuda_host_dequant_row");
	if (!dq)
		return;
	for (int ti = 0; ti < NTYPES; ti++) {
		int rows = 6, cols = 1024;
		kernels_weight w;
		uint8_t *data = make_weight(all_types[ti], rows, cols, &w);
		float want[1024], got[1024];
		for (int r = 0; r < rows; r++) {
			kernels_row_to_f32(&w, r, want);
			CHECK_INT(dq((int)all_types[ti], data + (size_t)r * w.row_bytes, cols, got), 0);
			double worst = 0;
			for (int c = 0; c < cols; c++)
				worst = fmax(worst, fabs((double)got[c] - want[c]) / (fabs(want[c]) + 1e-3));
			CHECK(worst < 1e-6, "%s row %d: the device's reader differs from the host's by %g",
			      kernels_dtype_name(all_types[ti]), r, worst);
		}
		free(data);
	}
	float out[32];
	uint8_t blk[34] = {0};
	CHECK(dq((int)KERNELS_Q4_K, blk, 32, out) != 0, "a Q4_K row of 32 columns was decoded");
}

/* No device here: the message names what is missing. With devices: one past
 * the last is refused by number. */
static void missing_device_named(void)
{
	owl_err err = {0};
	kernels_backend *be = NULL;
	int dev = gpu ? gpu_count : 0;
	CHECK(engine_cuda_backend_new(dev, &be, &err) != 0, "a backend on device %d was made", dev);
	CHECK(be == NULL, "out was left set on failure");
	if (gpu) {
		char want[64];
		snprintf(want, sizeof want, "no CUDA device %d", dev);
		CHECK(strstr(err.msg, want) != NULL, "expected \"%s\", got: %s", want, err.msg);
	} else {
		CHECK(strstr(err.msg, "device") != NULL || strstr(err.msg, "driver") != NULL,
		      "the refusal names neither device nor driver: %s", err.msg);
	}
	/* the probe agrees and does not crash */
	engine_gpu_info info;
	engine_gpu_probe(&info);
	CHECK_INT(info.backend_loaded, 1);
	CHECK_INT(info.device_count, gpu_count);
}

/* ---- buffers and copies ------------------------------------------------------ */

static void buffers_and_copies(void)
{
	owl_err err = {0};
	const kernels_backend_iface *f = gpu->iface;
	CHECK_STR(f->name, "cuda");
	CHECK_INT(f->abi_version, KERNELS_ABI_VERSION);
	for (int op = 0; op < KERNELS_OP_COUNT; op++)
		CHECK(!f->supports(gpu, (kernels_op)op, KERNELS_F32) ==
			      !cpu->iface->supports(cpu, (kernels_op)op, KERNELS_F32) ||
			      op == KERNELS_OP_KV_STORE || op == KERNELS_OP_ATTENTION,
		      "op %d: cuda and cpu disagree on supporting f32", op);
	CHECK(!f->supports(gpu, KERNELS_OP_COUNT, KERNELS_F32), "supports a non-op");
	size_t n = 3 << 20;
	uint8_t *h = malloc(n), *g = malloc(n);
	for (size_t i = 0; i < n; i++)
		h[i] = (uint8_t)(i * 7 + 3);
	uint8_t *d = dput(h, n);
	kernels_buffer *b = bufs[nbufs - 1].b;
	CHECK(f->buffer_data(b) == d, "buffer_data is not the device pointer");
	CHECK(f->copy_to_device(gpu, b, n - 2, h, 4, &err) != 0, "a copy past the end was taken");
	CHECK(f->copy_to_host(gpu, g, b, n - 2, 4, &err) != 0, "a read past the end was taken");
	uint8_t *d2 = dalloc(n);
	CHECK_INT(f->copy(gpu, d2, d, n, &err), 0);
	CHECK_INT(f->fill_zero(gpu, d2 + 100, 1000, &err), 0);
	dget(g, d2, n);
	memset(h + 100, 0, 1000);
	CHECK(memcmp(g, h, n) == 0, "copy + fill_zero: the bytes differ");
	dsync("buffers");
	free(h);
	free(g);
	dfree_all();
}

/* ---- projections ------------------------------------------------------------- */

/* Shapes: rows not a multiple of the 4 rows of a block, token counts on the
 * vector kernel (1, 5, 8) and on the GEMM (9, 33). */
static void matmul_every_type(void)
{
	static const int shapes[][2] = {{67, 256}, {130, 512}};
	static const int ns[] = {1, 5, 8, 9, 33};
	owl_err err = {0};
	int quick = getenv("OWL_TEST_QUICK") != NULL; /* one shape, no 33-token GEMM */
	for (int ti = 0; ti < NTYPES; ti++)
		for (int si = 0; si < 2 - quick; si++) {
			kernels_dtype t = all_types[ti];
			int rows = shapes[si][0], cols = shapes[si][1];
			kernels_weight w;
			uint8_t *data = make_weight(t, rows, cols, &w);
			kernels_buffer *owned = NULL;
			kernels_weight gw = to_gpu(&w, &owned);
			for (int ni = 0; ni < 5 - quick; ni++) {
				int n = ns[ni];
				float *x = frandv((size_t)n * cols, 1), *want = malloc((size_t)n * rows * 4);
				kernels_scratch sc = cpu_mb_scratch(n, cols);
				CHECK_INT(cpu->iface->matmul_widened(cpu, want, x, &w, n, &sc, &err), 0);
				float *dx = dput(x, (size_t)n * cols * 4), *dy = dalloc((size_t)n * rows * 4);
				CHECK(gpu->iface->matmul(gpu, dy, dx, &gw, n, &err) == 0, "matmul: %s", err.msg);
				float *got = back(dy, (size_t)n * rows);
				CLOSE(got, want, (size_t)n * rows, mm_tol(t, n), "matmul %s %dx%d n=%d",
				      kernels_dtype_name(t), rows, cols, n);
				/* the exact widened product */
				CHECK(gpu->iface->matmul_widened(gpu, dy, dx, &gw, n, NULL, &err) == 0,
				      "matmul_widened: %s", err.msg);
				free(got);
				got = back(dy, (size_t)n * rows);
				CLOSE(got, want, (size_t)n * rows, 1e-10, "matmul_widened %s %dx%d n=%d",
				      kernels_dtype_name(t), rows, cols, n);
				free(got);
				free(x);
				free(want);
				free(sc.data);
			}
			gpu->iface->buffer_free(gpu, owned);
			free(data);
		}
	dsync("matmul");
	dfree_all();
	printf("  matmul: %d types x %d shapes x %d token counts\n", NTYPES, 2 - quick, 5 - quick);
}

/* A column band of a weight (a strided view: a tensor-parallel shard) is
 * uploaded as whole rows and multiplies as the band's own matrix would. */
static void matmul_column_shard(void)
{
	owl_err err = {0};
	for (int ti = 0; ti < NTYPES; ti++) {
		kernels_dtype t = all_types[ti];
		int rows = 40, cols = 1024, half = 512;
		kernels_weight w;
		uint8_t *data = make_weight(t, rows, cols, &w);
		kernels_weight band = w;
		band.cols = half;
		band.data = w.data + kernels_row_bytes(t, half); /* the second half of each row */
		kernels_buffer *owned = NULL;
		kernels_weight gw = to_gpu(&band, &owned);
		CHECK(gw.row_bytes == kernels_row_bytes(t, half), "%s shard rows are %zu bytes apart",
		      kernels_dtype_name(t), gw.row_bytes);
		float *x = frandv(2 * half, 1), want[80];
		kernels_scratch sc = cpu_mb_scratch(2, half);
		CHECK_INT(cpu->iface->matmul_widened(cpu, want, x, &band, 2, &sc, &err), 0);
		float *dx = dput(x, 2 * half * 4), *dy = dalloc(80 * 4);
		CHECK(gpu->iface->matmul(gpu, dy, dx, &gw, 2, &err) == 0, "matmul: %s", err.msg);
		float *got = back(dy, 80);
		CLOSE(got, want, 80, mm_tol(t, 2), "column shard %s", kernels_dtype_name(t));
		free(got);
		free(x);
		free(sc.data);
		gpu->iface->buffer_free(gpu, owned);
		free(data);
	}
	dsync("column shard");
	dfree_all();
}

static void matvec_multi_mixed(void)
{
	owl_err err = {0};
	kernels_weight w[3], gw[3];
	uint8_t *data[3];
	kernels_buffer *owned[3];
	kernels_dtype t[3] = {KERNELS_Q4_K, KERNELS_BF16, KERNELS_Q8_0};
	int rows[3] = {64, 16, 33}, cols = 256;
	float *x = frandv(cols, 1), *dx = dput(x, cols * 4);
	float *dys[3];
	const kernels_weight *ws[3];
	for (int i = 0; i < 3; i++) {
		data[i] = make_weight(t[i], rows[i], cols, &w[i]);
		gw[i] = to_gpu(&w[i], &owned[i]);
		dys[i] = dalloc((size_t)rows[i] * 4);
		ws[i] = &gw[i];
	}
	CHECK(gpu->iface->matvec_multi(gpu, dys, ws, 3, dx, &err) == 0, "matvec_multi: %s", err.msg);
	kernels_scratch sc = cpu_mb_scratch(1, cols);
	for (int i = 0; i < 3; i++) {
		float want[64];
		CHECK_INT(cpu->iface->matmul_widened(cpu, want, x, &w[i], 1, &sc, &err), 0);
		float *got = back(dys[i], (size_t)rows[i]);
		CLOSE(got, want, (size_t)rows[i], mm_tol(t[i], 1), "matvec_multi %d (%s)", i,
		      kernels_dtype_name(t[i]));
		free(got);
		gpu->iface->buffer_free(gpu, owned[i]);
		free(data[i]);
	}
	free(sc.data);
	free(x);
	dsync("matvec_multi");
	dfree_all();
}

static void matmul_backward_every_type(void)
{
	owl_err err = {0};
	for (int ti = 0; ti < NTYPES; ti++)
		for (int acc = 0; acc < 2; acc++) {
			kernels_dtype t = all_types[ti];
			int rows = 70, cols = 256, n = 6;
			kernels_weight w;
			uint8_t *data = make_weight(t, rows, cols, &w);
			kernels_buffer *owned = NULL;
			kernels_weight gw = to_gpu(&w, &owned);
			float *dy = frandv((size_t)n * rows, 1), *dx = frandv((size_t)n * cols, 1);
			float *ddy = dput(dy, (size_t)n * rows * 4), *ddx = dput(dx, (size_t)n * cols * 4);
			kernels_scratch sc = cpu_mb_scratch(n, cols);
			CHECK_INT(cpu->iface->matmul_backward(cpu, dx, dy, &w, n, acc, &sc, &err), 0);
			CHECK(gpu->iface->matmul_backward(gpu, ddx, ddy, &gw, n, acc, NULL, &err) == 0,
			      "matmul_backward: %s", err.msg);
			float *got = back(ddx, (size_t)n * cols);
			CLOSE(got, dx, (size_t)n * cols, 1e-10, "matmul_backward %s accumulate %d",
			      kernels_dtype_name(t), acc);
			free(got);
			free(dy);
			free(dx);
			free(sc.data);
			gpu->iface->buffer_free(gpu, owned);
			free(data);
		}
	dsync("matmul_backward");
	dfree_all();
}

static void embedding_every_type(void)
{
	owl_err err = {0};
	for (int ti = 0; ti < NTYPES; ti++) {
		kernels_dtype t = all_types[ti];
		int rows = 50, cols = 512, n = 7;
		kernels_weight w;
		uint8_t *data = make_weight(t, rows, cols, &w);
		kernels_buffer *owned = NULL;
		kernels_weight gw = to_gpu(&w, &owned);
		int32_t ids[7] = {0, 49, 3, 3, 17, 25, 48};
		float *want = malloc((size_t)n * cols * 4);
		CHECK_INT(cpu->iface->embedding(cpu, want, &w, ids, n, &err), 0);
		int32_t *dids = dput(ids, sizeof ids);
		float *dout = dalloc((size_t)n * cols * 4);
		CHECK(gpu->iface->embedding(gpu, dout, &gw, dids, n, &err) == 0, "embedding: %s", err.msg);
		float *got = back(dout, (size_t)n * cols);
		/* exact but for the fused multiply-adds of the block scales */
		CLOSE(got, want, (size_t)n * cols, 1e-12, "embedding %s", kernels_dtype_name(t));
		free(got);
		free(want);
		gpu->iface->buffer_free(gpu, owned);
		free(data);
	}
	dsync("embedding");
	/* an id outside the table is reported by the next synchronize */
	kernels_weight w;
	uint8_t *data = make_weight(KERNELS_F32, 4, 32, &w);
	kernels_buffer *owned = NULL;
	kernels_weight gw = to_gpu(&w, &owned);
	int32_t bad[2] = {1, 4};
	int32_t *dids = dput(bad, sizeof bad);
	float *dout = dalloc(2 * 32 * 4);
	CHECK_INT(gpu->iface->embedding(gpu, dout, &gw, dids, 2, &err), 0);
	CHECK(gpu->iface->synchronize(gpu, &err) != 0 && strstr(err.msg, "token id"),
	      "an id outside the table went unreported (%s)", err.msg);
	dsync("embedding after the bad id"); /* the flag is cleared once reported */
	gpu->iface->buffer_free(gpu, owned);
	free(data);
	dfree_all();
}

static void embedding_backward_repeats(void)
{
	owl_err err = {0};
	int rows = 20, dim = 96, n = 9;
	int32_t ids[9] = {3, 3, 0, 19, 7, 3, 7, 12, 0};
	float *table = frandv((size_t)rows * dim, 1), *dy = frandv((size_t)n * dim, 1);
	float *dt = dput(table, (size_t)rows * dim * 4), *ddy = dput(dy, (size_t)n * dim * 4);
	int32_t *dids = dput(ids, sizeof ids);
	CHECK_INT(cpu->iface->embedding_backward(cpu, table, dy, ids, n, dim, &err), 0);
	CHECK(gpu->iface->embedding_backward(gpu, dt, ddy, dids, n, dim, &err) == 0, "%s", err.msg);
	float *got = back(dt, (size_t)rows * dim);
	CLOSE(got, table, (size_t)rows * dim, 1e-12, "embedding_backward %s", "");
	free(got);
	free(table);
	free(dy);
	dsync("embedding_backward");
	dfree_all();
}

/* ---- row and elementwise ops -------------------------------------------------- */

/* CUDA graphs: a recording replays the recorded ops on the buffers' current
 * contents, as often as launched, and equals running them op by op; a
 * synchronous call inside a recording spoils it (no graph, nothing ran) and
 * leaves the backend usable; a graph recorded before the backend's
 * workspace moved is called stale and runs nothing. */
static void graphs_replay(void)
{
	owl_err err = {0};
	const kernels_backend_iface *f = gpu->iface;
	CHECK(f->graph_begin && f->graph_end && f->graph_launch && f->graph_free,
	      "the CUDA backend records no graphs");
	if (!f->graph_begin)
		return;
	int rows = 67, cols = 256, n = 3;
	kernels_weight w;
	uint8_t *data = make_weight(KERNELS_Q8_0, rows, cols, &w);
	kernels_buffer *owned = NULL;
	kernels_weight gw = to_gpu(&w, &owned);
	size_t nx = (size_t)n * cols, ny = (size_t)n * rows;
	float *x0 = frandv(nx, 1), *b0 = frandv(nx, 1);
	float *dx = dput(x0, nx * 4);
	kernels_buffer *xbuf = bufs[nbufs - 1].b;
	float *db = dput(b0, nx * 4), *dy = dalloc(ny * 4), *dsum = dalloc(nx * 4);
	/* the ops: sum = x + b, y = sum W^T, y = silu(y) * y (each launch
	 * computes y afresh from x, so launching twice gives what once does) */
#define RUN_OPS(e)                                                                              	(f->copy(gpu, dsum, dx, nx * 4, (e)) || f->add(gpu, dsum, db, nx, (e)) ||                  	 f->matmul(gpu, dy, dsum, &gw, n, (e)) || f->swiglu(gpu, dy, dy, ny, (e)))
	/* op by op first: the workspace grows to what the ops want */
	CHECK(!RUN_OPS(&err), "the ops: %s", err.msg);
	float *want = back(dy, ny);
	kernels_graph *g = NULL;
	CHECK_INT(f->graph_begin(gpu, &err), 0);
	CHECK(!RUN_OPS(&err), "recording: %s", err.msg);
	CHECK(f->graph_end(gpu, &g, &err) == 0 && g, "graph_end: %s", err.msg);
	CHECK_INT(f->fill_zero(gpu, dy, ny * 4, &err), 0);
	int stale = 1;
	CHECK(f->graph_launch(gpu, g, &stale, &err) == 0 && !stale, "graph_launch: %s", err.msg);
	float *got = back(dy, ny);
	CLOSE(got, want, ny, 0, "a graph's replay against the ops run one by one%s", "");
	free(got), free(want);
	/* new input contents, same buffers: the replay reads them */
	float *x1 = frandv(nx, 2);
	CHECK_INT(f->copy_to_device(gpu, xbuf, 0, x1, nx * 4, &err), 0);
	CHECK(!RUN_OPS(&err), "the ops: %s", err.msg);
	want = back(dy, ny);
	CHECK_INT(f->fill_zero(gpu, dy, ny * 4, &err), 0);
	CHECK(f->graph_launch(gpu, g, &stale, &err) == 0 && !stale, "graph_launch: %s", err.msg);
	CHECK(f->graph_launch(gpu, g, &stale, &err) == 0 && !stale, "graph_launch: %s", err.msg);
	got = back(dy, ny);
	CLOSE(got, want, ny, 0, "a replay on new inputs%s", "");
	free(got);
	/* a synchronous call spoils a recording; the backend works on */
	kernels_graph *bad = NULL;
	float tmp[4];
	CHECK_INT(f->graph_begin(gpu, &err), 0);
	f->add(gpu, dsum, db, nx, &err);
	f->copy_to_host(gpu, tmp, xbuf, 0, sizeof tmp, &err);
	owl_err end_err = {0};
	CHECK(f->graph_end(gpu, &bad, &end_err) != 0 && !bad, "a recording with a synchronous copy "
	      "made a graph");
	CHECK(strstr(end_err.msg, "could not be recorded") != NULL, "graph_end said: %s", end_err.msg);
	CHECK_INT(f->fill_zero(gpu, dy, ny * 4, &err), 0);
	CHECK(!RUN_OPS(&err), "the ops after a spoilt recording: %s", err.msg);
	got = back(dy, ny);
	CLOSE(got, want, ny, 0, "the ops after a spoilt recording%s", "");
	free(got), free(want);
	/* a bigger product moves the workspace: the graph is stale */
	int big = 4096;
	float *xb = frandv((size_t)big * cols, 1);
	float *dxb = dput(xb, (size_t)big * cols * 4), *dyb = dalloc((size_t)big * rows * 4);
	CHECK(f->matmul(gpu, dyb, dxb, &gw, big, &err) == 0, "matmul: %s", err.msg);
	CHECK(f->graph_launch(gpu, g, &stale, &err) == 0, "graph_launch: %s", err.msg);
	CHECK(stale, "a graph recorded before the workspace moved was launched");
	f->graph_free(gpu, g);
	f->graph_free(gpu, NULL);
#undef RUN_OPS
	dsync("graphs");
	gpu->iface->buffer_free(gpu, owned);
	dfree_all();
	free(data), free(x0), free(b0), free(x1), free(xb);
}

static void norms_rope_elementwise(void)
{
	owl_err err = {0};
	int rows = 13, dim = 4096 + 96;
	size_t n = (size_t)rows * dim;
	float *x = frandv(n, 3), *w = frandv(dim, 1), *out = malloc(n * 4);
	float *dx = dput(x, n * 4), *dw = dput(w, dim * 4), *dout = dalloc(n * 4);
	CHECK_INT(cpu->iface->rmsnorm(cpu, out, x, w, rows, dim, 1e-5f, &err), 0);
	CHECK(gpu->iface->rmsnorm(gpu, dout, dx, dw, rows, dim, 1e-5f, &err) == 0, "%s", err.msg);
	float *got = back(dout, n);
	CLOSE(got, out, n, 1e-12, "rmsnorm %s", "");
	free(got);

	/* rmsnorm_backward with the weight gradient */
	float *g = frandv(n, 1), *gx = frandv(n, 1), *gw = frandv(dim, 1);
	float *dg = dput(g, n * 4), *dgx = dput(gx, n * 4), *dgw = dput(gw, dim * 4);
	CHECK_INT(cpu->iface->rmsnorm_backward(cpu, gx, gw, g, x, w, rows, dim, 1e-5f, &err), 0);
	CHECK(gpu->iface->rmsnorm_backward(gpu, dgx, dgw, dg, dx, dw, rows, dim, 1e-5f, &err) == 0,
	      "%s", err.msg);
	got = back(dgx, n);
	CLOSE(got, gx, n, 1e-11, "rmsnorm_backward dx %s", "");
	free(got);
	got = back(dgw, dim);
	CLOSE(got, gw, dim, 1e-11, "rmsnorm_backward dweight %s", "");
	free(got);

	/* rope, both layouts, positions out of order; and its backward */
	int n_tok = 11, heads = 6, hd = 128;
	size_t rn = (size_t)n_tok * heads * hd;
	int32_t pos[11] = {0, 1, 2, 700, 5, 8191, 3, 40000, 12, 13, 99};
	float inv[64];
	for (int i = 0; i < 64; i++)
		inv[i] = powf(500000.0f, -2.0f * i / hd);
	int32_t *dpos = dput(pos, sizeof pos);
	float *dinv = dput(inv, sizeof inv);
	for (int layout = 0; layout < 2; layout++)
		for (int bwd = 0; bwd < 2; bwd++) {
			float *r = frandv(rn, 1), *dr = dput(r, rn * 4);
			if (bwd) {
				CHECK_INT(cpu->iface->rope_backward(cpu, r, n_tok, pos, heads, hd, inv,
								    (kernels_rope_layout)layout, &err), 0);
				CHECK(gpu->iface->rope_backward(gpu, dr, n_tok, dpos, heads, hd, dinv,
								(kernels_rope_layout)layout, &err) == 0, "%s",
				      err.msg);
			} else {
				CHECK_INT(cpu->iface->rope(cpu, r, n_tok, pos, heads, hd, inv,
							   (kernels_rope_layout)layout, &err), 0);
				CHECK(gpu->iface->rope(gpu, dr, n_tok, dpos, heads, hd, dinv,
						       (kernels_rope_layout)layout, &err) == 0, "%s", err.msg);
			}
			got = back(dr, rn);
			CLOSE(got, r, rn, 1e-11, "rope layout %d backward %d", layout, bwd);
			free(got);
			free(r);
		}

	/* add, add_rows, swiglu and its backward, on an odd length */
	size_t m = 100003;
	float *a = frandv(m, 4), *b = frandv(m, 4), *c = frandv(m, 1);
	float *da = dput(a, m * 4), *db = dput(b, m * 4), *dc = dput(c, m * 4);
	CHECK_INT(cpu->iface->add(cpu, a, b, m, &err), 0);
	CHECK(gpu->iface->add(gpu, da, db, m, &err) == 0, "%s", err.msg);
	got = back(da, m);
	CLOSE(got, a, m, 0, "add %s", "");
	free(got);
	CHECK_INT(cpu->iface->add_rows(cpu, a, c, 7, 1000, &err), 0);
	CHECK(gpu->iface->add_rows(gpu, da, dc, 7, 1000, &err) == 0, "%s", err.msg);
	got = back(da, m);
	CLOSE(got, a, m, 0, "add_rows %s", "");
	free(got);
	float *sg = malloc(m * 4), *su = malloc(m * 4);
	float *dsg = dalloc(m * 4), *dsu = dalloc(m * 4);
	CHECK_INT(cpu->iface->swiglu_backward(cpu, sg, su, c, a, b, m, &err), 0);
	CHECK(gpu->iface->swiglu_backward(gpu, dsg, dsu, dc, da, db, m, &err) == 0, "%s", err.msg);
	got = back(dsg, m);
	CLOSE(got, sg, m, 1e-11, "swiglu_backward dgate %s", "");
	free(got);
	got = back(dsu, m);
	CLOSE(got, su, m, 1e-11, "swiglu_backward dup %s", "");
	free(got);
	CHECK_INT(cpu->iface->swiglu(cpu, a, b, m, &err), 0);
	CHECK(gpu->iface->swiglu(gpu, da, db, m, &err) == 0, "%s", err.msg);
	got = back(da, m);
	CLOSE(got, a, m, 1e-11, "swiglu %s", "");
	free(got);

	/* three AdamW steps with weight decay */
	float *p = frandv(m, 1), *mo = calloc(m, 4), *ve = calloc(m, 4);
	float *dp = dput(p, m * 4), *dm = dalloc(m * 4), *dv = dalloc(m * 4);
	for (int step = 1; step <= 3; step++) {
		CHECK_INT(cpu->iface->adamw_step(cpu, p, c, mo, ve, m, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f,
						 step, &err), 0);
		CHECK(gpu->iface->adamw_step(gpu, dp, dc, dm, dv, m, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f,
					     step, &err) == 0, "%s", err.msg);
	}
	got = back(dp, m);
	CLOSE(got, p, m, 1e-12, "adamw p %s", "");
	free(got);
	got = back(dv, m);
	CLOSE(got, ve, m, 1e-12, "adamw v %s", "");
	free(got);
	dsync("elementwise");
	free(x), free(w), free(out), free(g), free(gx), free(gw), free(a), free(b), free(c);
	free(sg), free(su), free(p), free(mo), free(ve);
	dfree_all();
}

static void cross_entropy_both(void)
{
	owl_err err = {0};
	int rows = 9, vocab = 32000 + 7;
	size_t n = (size_t)rows * vocab;
	float *l = frandv(n, 8);
	int32_t t[9] = {0, 31999, 5, -1, 32006, 77, -1, 1000, 3};
	int32_t t_all[9] = {0, 31999, 5, 12, 32006, 77, 9, 1000, 3};
	float *dl = dput(l, n * 4);
	int32_t *dt = dput(t, sizeof t), *dta = dput(t_all, sizeof t_all);
	float want, got;
	CHECK_INT(cpu->iface->cross_entropy(cpu, &want, l, t_all, rows, vocab, &err), 0);
	CHECK(gpu->iface->cross_entropy(gpu, &got, dl, dta, rows, vocab, &err) == 0, "%s", err.msg);
	CHECK_NEAR(got, want, 1e-5 * fabs(want));
	/* the backward, out of place and in place */
	for (int inplace = 0; inplace < 2; inplace++) {
		float *d = malloc(n * 4), *dd = inplace ? dput(l, n * 4) : dalloc(n * 4);
		double ls_c, ls_g;
		int64_t c_c, c_g;
		CHECK_INT(cpu->iface->cross_entropy_backward(cpu, d, l, t, rows, vocab, 0.25f, &ls_c, &c_c,
							     &err), 0);
		CHECK(gpu->iface->cross_entropy_backward(gpu, dd, inplace ? dd : dl, dt, rows, vocab,
							 0.25f, &ls_g, &c_g, &err) == 0, "%s", err.msg);
		CHECK_INT(c_g, c_c);
		CHECK_NEAR(ls_g, ls_c, 1e-5 * fabs(ls_c));
		float *gd = back(dd, n);
		CLOSE(gd, d, n, 1e-10, "cross_entropy_backward in place %d", inplace);
		free(gd);
		free(d);
	}
	/* a target outside the vocabulary is an error */
	int32_t badt[1] = {vocab};
	int32_t *dbad = dput(badt, sizeof badt);
	CHECK(gpu->iface->cross_entropy(gpu, &got, dl, dbad, 1, vocab, &err) != 0,
	      "a target outside the vocabulary was scored");
	dsync("cross_entropy");
	free(l);
	dfree_all();
}

static void lora_both(void)
{
	owl_err err = {0};
	int n = 7, in = 96, out = 80, r = 8, lda = 128, ldb = 12;
	float *x = frandv((size_t)n * in, 1), *y = frandv((size_t)n * out, 1);
	float *a = frandv((size_t)r * lda, 1), *b = frandv((size_t)out * ldb, 1);
	float *dy = frandv((size_t)n * out, 1), *dxh = frandv((size_t)n * in, 1);
	float *da = frandv((size_t)r * lda, 1), *db = frandv((size_t)out * ldb, 1);
	float *tmp = malloc((size_t)2 * n * r * 4);
	float *gx = dput(x, (size_t)n * in * 4), *gy = dput(y, (size_t)n * out * 4);
	float *ga = dput(a, (size_t)r * lda * 4), *gb = dput(b, (size_t)out * ldb * 4);
	float *gdy = dput(dy, (size_t)n * out * 4), *gdx = dput(dxh, (size_t)n * in * 4);
	float *gda = dput(da, (size_t)r * lda * 4), *gdb = dput(db, (size_t)out * ldb * 4);
	float *gtmp = dalloc((size_t)2 * n * r * 4);
	CHECK_INT(cpu->iface->lora(cpu, y, x, n, in, out, r, a, lda, b, ldb, 0.5f, tmp, &err), 0);
	CHECK(gpu->iface->lora(gpu, gy, gx, n, in, out, r, ga, lda, gb, ldb, 0.5f, gtmp, &err) == 0,
	      "%s", err.msg);
	float *got = back(gy, (size_t)n * out);
	CLOSE(got, y, (size_t)n * out, 1e-11, "lora %s", "");
	free(got);
	CHECK_INT(cpu->iface->lora_backward(cpu, dxh, da, db, dy, x, n, in, out, r, a, lda, b, ldb,
					    0.5f, tmp, &err), 0);
	CHECK(gpu->iface->lora_backward(gpu, gdx, gda, gdb, gdy, gx, n, in, out, r, ga, lda, gb, ldb,
					0.5f, gtmp, &err) == 0, "%s", err.msg);
	got = back(gdx, (size_t)n * in);
	CLOSE(got, dxh, (size_t)n * in, 1e-11, "lora_backward dx %s", "");
	free(got);
	got = back(gda, (size_t)r * lda);
	CLOSE(got, da, (size_t)r * lda, 1e-11, "lora_backward da %s", "");
	free(got);
	got = back(gdb, (size_t)out * ldb);
	CLOSE(got, db, (size_t)out * ldb, 1e-11, "lora_backward db %s", "");
	free(got);
	dsync("lora");
	free(x), free(y), free(a), free(b), free(dy), free(dxh), free(da), free(db), free(tmp);
	dfree_all();
}

/* ---- the KV cache and attention ------------------------------------------------- */

/* A paged cache of nblocks blocks on both backends, filled through kv_store
 * (so kv_store is compared too, byte for byte). */
typedef struct cache {
	kernels_kv_layer h, d;
	size_t bytes;
} cache;

static void cache_new(cache *c, kernels_kv_type t, int nblocks, int bt, int row_elems)
{
	size_t eb = t == KERNELS_KV_F16 ? 2 : 4;
	size_t stride = (size_t)bt * row_elems * eb + 64; /* blocks need not be packed */
	c->bytes = stride * nblocks;
	c->h = (kernels_kv_layer){.type = t, .k = calloc(1, c->bytes), .v = calloc(1, c->bytes),
				  .block_stride = stride, .block_tokens = bt, .row_elems = row_elems};
	c->d = c->h;
	c->d.k = dalloc(c->bytes);
	c->d.v = dalloc(c->bytes);
}

static void cache_free(cache *c)
{
	free(c->h.k);
	free(c->h.v);
}

/* Positions [0, npos) of a sequence with block table blocks into the cache. */
static void cache_fill(cache *c, const int32_t *blocks, int npos)
{
	owl_err err = {0};
	int re = c->h.row_elems;
	float *k = frandv((size_t)npos * re, 1), *v = frandv((size_t)npos * re, 1);
	int32_t *slots = malloc((size_t)npos * 4);
	for (int p = 0; p < npos; p++)
		slots[p] = blocks[p / c->h.block_tokens] * c->h.block_tokens + p % c->h.block_tokens;
	CHECK_INT(cpu->iface->kv_store(cpu, &c->h, k, v, slots, npos, &err), 0);
	float *dk = dput(k, (size_t)npos * re * 4), *dv = dput(v, (size_t)npos * re * 4);
	int32_t *ds = dput(slots, (size_t)npos * 4);
	CHECK(gpu->iface->kv_store(gpu, &c->d, dk, dv, ds, npos, &err) == 0, "kv_store: %s", err.msg);
	free(k), free(v), free(slots);
}

static void cache_same(const cache *c, const char *what)
{
	uint8_t *k = malloc(c->bytes), *v = malloc(c->bytes);
	dget(k, c->d.k, c->bytes);
	dget(v, c->d.v, c->bytes);
	CHECK(memcmp(k, c->h.k, c->bytes) == 0 && memcmp(v, c->h.v, c->bytes) == 0,
	      "%s: the caches differ after kv_store", what);
	free(k), free(v);
}

/* Segments: a prompt from position 0, a prompt continuing a cached prefix,
 * two decoding rows (one with a long context), each sequence with its own
 * scattered blocks; GQA; the whole model's heads or one rank's slice of
 * them; with and without a sliding window; head sizes 64, 80 (not a
 * multiple of the 32 lanes that share a row's columns), 128 and 256. */
static void attention_paged(void)
{
	owl_err err = {0};
	static const int hds[] = {64, 80, 128, 256};
	for (int kt = 0; kt < 2; kt++)
		for (int hi = 0; hi < 4; hi++)
			for (int slice = 0; slice < 2; slice++)
				for (int wi = 0; wi < 2; wi++) {
					/* quick (the host emulator): a quarter of the cases, each
					 * value of every dimension still taken */
					if (getenv("OWL_TEST_QUICK") && (kt + hi + slice + wi) % 4)
						continue;
					int hd = hds[hi], kvh_all = 4, group = 4, bt = 16, window = wi ? 19 : 0;
					/* a rank's slice: query heads 4..11 of 16, kv heads 1..2 */
					int n_heads = slice ? 8 : 16, head0 = slice ? 4 : 0;
					int kv_head0 = slice ? 1 : 0, kvh = slice ? 2 : kvh_all;
					int row_elems = kvh * hd;
					kernels_attn_seg segs[4] = {{0, 40, 0, NULL}, {40, 20, 30, NULL},
								     {60, 1, 130, NULL}, {61, 1, 7, NULL}};
					int nseg = 4, n_tok = 62, nblocks = 64;
					cache c;
					cache_new(&c, kt ? KERNELS_KV_F16 : KERNELS_KV_F32, nblocks, bt, row_elems);
					int32_t tables[4][16];
					kernels_attn_seg dsegs[4];
					int next = nblocks - 1;
					for (int s = 0; s < nseg; s++) {
						int ctx = segs[s].pos0 + segs[s].ntok;
						for (int b = 0; b < (ctx + bt - 1) / bt; b++)
							tables[s][b] = next, next -= 3;
						if (next < 0)
							next += nblocks - 1;
						cache_fill(&c, tables[s], ctx);
						segs[s].blocks = tables[s];
						dsegs[s] = segs[s];
						dsegs[s].blocks = dput(tables[s], sizeof tables[s]);
					}
					cache_same(&c, "attention cache");
					size_t qn = (size_t)n_tok * n_heads * hd;
					float *q = frandv(qn, 1), *out = malloc(qn * 4);
					size_t sf = kernels_attention_scratch(160, row_elems, omp_get_max_threads());
					kernels_scratch sc = {malloc(sf * 4), sf};
					CHECK_INT(cpu->iface->attention(cpu, out, q, segs, nseg, &c.h, n_heads, head0,
									group, kv_head0, hd, window, &sc, &err), 0);
					float *dq = dput(q, qn * 4), *dout = dalloc(qn * 4);
					kernels_attn_seg *gsegs = dput(dsegs, sizeof dsegs);
					CHECK(gpu->iface->attention(gpu, dout, dq, gsegs, nseg, &c.d, n_heads, head0,
								    group, kv_head0, hd, window, NULL, &err) == 0,
					      "attention: %s", err.msg);
					float *got = back(dout, qn);
					CLOSE(got, out, qn, 1e-9, "attention %s hd %d slice %d window %d",
					      kt ? "f16" : "f32", hd, slice, window);
					free(got), free(q), free(out), free(sc.data);
					cache_free(&c);
					dsync("attention");
					dfree_all();
				}
}

/* Training's attention over packed segments and its backward: segments of
 * uneven lengths (longer than a tile of rows and of keys), GQA, windows. */
static void attention_packed_and_backward(void)
{
	owl_err err = {0};
	static const int hds[] = {64, 80, 128};
	/* OWL_TEST_QUICK (the host emulator, tests/run.sh): one head size and
	 * shorter segments, still longer than a tile of rows and of keys */
	int quick = getenv("OWL_TEST_QUICK") != NULL;
	for (int hi = 0; hi < (quick ? 1 : 3); hi++)
		for (int wi = quick; wi < 2; wi++) {
			int hd = hds[hi], n_heads = 8, n_kv = 2, window = wi ? 21 : 0;
			int s0 = quick ? 20 : 37, s1 = quick ? 36 : 70;
			kernels_attn_seg segs[3] = {{0, s0, 0, NULL}, {s0, s1, 0, NULL},
						     {s0 + s1, 5, 0, NULL}};
			int nseg = 3, n_tok = s0 + s1 + 5, max_seg = s1;
			size_t qn = (size_t)n_tok * n_heads * hd, kn = (size_t)n_tok * n_kv * hd;
			float *q = frandv(qn, 1), *k = frandv(kn, 1), *v = frandv(kn, 1);
			float *dout = frandv(qn, 1), *out = malloc(qn * 4);
			float *dq = malloc(qn * 4), *dk = malloc(kn * 4), *dv = malloc(kn * 4);
			size_t sf = kernels_attention_packed_scratch(n_tok, max_seg, n_heads * hd,
								     omp_get_max_threads());
			kernels_scratch sc = {malloc(sf * 4), sf};
			CHECK_INT(cpu->iface->attention_packed(cpu, out, q, k, v, segs, nseg, n_heads, n_kv, hd,
							       window, &sc, &err), 0);
			CHECK_INT(cpu->iface->attention_backward(cpu, dq, dk, dv, dout, q, k, v, segs, nseg,
								 n_heads, n_kv, hd, window, &sc, &err), 0);
			float *gq = dput(q, qn * 4), *gk = dput(k, kn * 4), *gv = dput(v, kn * 4);
			float *gdout = dput(dout, qn * 4), *gout = dalloc(qn * 4);
			float *gdq = dalloc(qn * 4), *gdk = dalloc(kn * 4), *gdv = dalloc(kn * 4);
			kernels_attn_seg *gsegs = dput(segs, sizeof segs);
			CHECK(gpu->iface->attention_packed(gpu, gout, gq, gk, gv, gsegs, nseg, n_heads, n_kv,
							   hd, window, NULL, &err) == 0, "%s", err.msg);
			CHECK(gpu->iface->attention_backward(gpu, gdq, gdk, gdv, gdout, gq, gk, gv, gsegs,
							     nseg, n_heads, n_kv, hd, window, NULL,
							     &err) == 0, "%s", err.msg);
			float *got = back(gout, qn);
			CLOSE(got, out, qn, 1e-9, "attention_packed hd %d window %d", hd, window);
			free(got);
			got = back(gdq, qn);
			CLOSE(got, dq, qn, 1e-8, "attention_backward dq hd %d window %d", hd, window);
			free(got);
			got = back(gdk, kn);
			CLOSE(got, dk, kn, 1e-8, "attention_backward dk hd %d window %d", hd, window);
			free(got);
			got = back(gdv, kn);
			CLOSE(got, dv, kn, 1e-8, "attention_backward dv hd %d window %d", hd, window);
			free(got);
			free(q), free(k), free(v), free(dout), free(out), free(dq), free(dk), free(dv);
			free(sc.data);
			dsync("attention_packed");
			dfree_all();
		}
}

/* ---- sampling ----------------------------------------------------------------- */

/* The device's draw against the CPU reference: every option of
 * kernels_sample_row (greedy, temperature, top_k, top_p, together), rows
 * of distinct logits, rows of many ties (small integers, all equal, -0 and
 * +0, -inf), the same u on both, over several rounds of u (0 and just
 * below 1 among them). OWL_TEST_QUICK (the host emulator): small rows. */
static void sample_rows(void)
{
	owl_err err = {0};
	int quick = getenv("OWL_TEST_QUICK") != NULL;
	const int vocabs[] = {50000, 1000, 7};
	enum { ROWS = 24 };
	const kernels_sample_row opts[ROWS] = {
		{0, 1, 0, 0.3f},       {0.7f, 1, 40, 0.5f},    {1.0f, 0.9f, 0, 0.77f},
		{0, 1, 0, 0},          {1.3f, 0.5f, 100, 0.01f}, {0.9f, 0, 0, 0.999f},
		{2.0f, 0.95f, 1, 0.6f}, {0.5f, 1, 0, 0.25f},   {1.0f, 1, 0, 0.5f},
		{1.0f, 1, 3, 0.5f},    {1.0f, 0.1f, 0, 0.5f},  {1.0f, 0.5f, 5, 0.5f},
		{0.3f, 0.7f, 2, 0.9f}, {5.0f, 1, 0, 0.1f},     {1.0f, 1, 1000000, 0.4f},
		{0.01f, 1, 0, 0.6f},   {1.0f, 0.99f, 0, 0.2f}, {0, 0.5f, 5, 0.5f},
		{1.5f, 1, 2, 0.3f},    {1.0f, 0.3f, 4, 0.8f},  {0.8f, 0.6f, 0, 0.45f},
		{1.0f, 1, 6, 0.7f},    {2.5f, 0.8f, 3, 0.05f}, {1.0f, 0.25f, 0, 0.99f},
	};
	for (int vi = quick; vi < 3; vi++) {
		int vocab = vocabs[vi], rows = ROWS;
		size_t n = (size_t)rows * vocab;
		float *l = frandv(n, 6);
		for (int r = 0; r < rows; r++) {
			float *row = l + (size_t)r * vocab;
			switch (r % 6) {
			case 1: /* ties everywhere: small integers */
				for (int v = 0; v < vocab; v++)
					row[v] = (float)irand(5) - 2;
				break;
			case 3: /* all equal */
				for (int v = 0; v < vocab; v++)
					row[v] = 1.5f;
				break;
			case 5: /* -0 and +0 at the top, -inf below */
				for (int v = 0; v < vocab; v++)
					row[v] = v % 3 == 0 ? -INFINITY : v % 3 == 1 ? -0.0f : 0.0f;
				break;
			default: /* distinct, with a tie at the top */
				if (vocab > 20)
					row[10] = row[20] = 100;
			}
		}
		kernels_sample_row p[ROWS];
		memcpy(p, opts, sizeof p);
		float *dl = dput(l, n * 4);
		for (int round = 0; round < (quick ? 3 : 6); round++) {
			int32_t want[ROWS], got[ROWS];
			CHECK_INT(cpu->iface->sample(cpu, want, l, rows, vocab, p, &err), 0);
			CHECK(gpu->iface->sample(gpu, got, dl, rows, vocab, p, &err) == 0, "%s", err.msg);
			for (int r = 0; r < rows; r++) {
				CHECK(got[r] == want[r], "vocab %d round %d row %d (T %g top_k %d top_p %g u "
				      "%g): cuda %d, cpu %d", vocab, round, r, p[r].temperature, p[r].top_k,
				      p[r].top_p, p[r].u, got[r], want[r]);
			}
			for (int r = 0; r < rows; r++)
				p[r].u = round == 0 ? (r % 2 ? 0.0f : nextafterf(1.0f, 0.0f))
						    : (frand() + 1) * 0.4999f;
		}
		printf("  sample: vocab %d, %d rows x %d rounds\n", vocab, rows, quick ? 3 : 6);
		dsync("sample");
		free(l);
		dfree_all();
	}
}

/* ---- NCCL -------------------------------------------------------------------- */

static void nccl_comm(void)
{
	owl_err err = {0};
	int n = gpu_count < 4 ? gpu_count : 4;
	kernels_backend *bes[4] = {gpu, NULL, NULL, NULL};
	for (int i = 1; i < n; i++)
		CHECK(engine_cuda_backend_new(i, &bes[i], &err) == 0, "device %d: %s", i, err.msg);
	/* two ranks on one device are refused by name */
	kernels_backend *twice[2] = {gpu, gpu};
	kernels_comm *c = NULL;
	CHECK(engine_cuda_nccl_comm_new(twice, 2, &c, &err) != 0 && strstr(err.msg, "device"),
	      "two ranks on one device: %s", err.msg);
	CHECK(engine_cuda_nccl_comm_new(bes, n, &c, &err) == 0, "comm over %d devices: %s", n, err.msg);
	if (c) {
		CHECK_STR(c->name, "nccl");
		CHECK_INT(c->size, n);
		CHECK_INT(c->local, n);
		size_t m = 1000;
		float *b[4], *o[4];
		kernels_buffer *bb[4], *ob[4];
		for (int i = 0; i < n; i++) {
			float h[1000];
			for (size_t j = 0; j < m; j++)
				h[j] = (float)(i + 1) * (float)j;
			CHECK_INT(kernels_alloc(bes[i], m * 4, &bb[i], (void **)&b[i], &err), 0);
			CHECK_INT(kernels_alloc(bes[i], m * 4 * n, &ob[i], (void **)&o[i], &err), 0);
			CHECK_INT(bes[i]->iface->copy_to_device(bes[i], bb[i], 0, h, m * 4, &err), 0);
		}
		CHECK(c->all_gather(c, o, (const float *const *)b, m, &err) == 0, "%s", err.msg);
		CHECK(c->all_reduce(c, b, m, &err) == 0, "%s", err.msg);
		CHECK(c->barrier(c, &err) == 0, "%s", err.msg);
		float sum = (float)(n * (n + 1) / 2);
		for (int i = 0; i < n; i++) {
			float h[1000], *g = malloc(m * 4 * n);
			CHECK_INT(bes[i]->iface->copy_to_host(bes[i], h, bb[i], 0, m * 4, &err), 0);
			CHECK(h[7] == 7 * sum && h[999] == 999 * sum, "all_reduce rank %d: %g", i, h[7]);
			CHECK_INT(bes[i]->iface->copy_to_host(bes[i], g, ob[i], 0, m * 4 * n, &err), 0);
			for (int q = 0; q < n; q++)
				CHECK(g[(size_t)q * m + 5] == (float)(q + 1) * 5, "all_gather rank %d part %d",
				      i, q);
			free(g);
			bes[i]->iface->buffer_free(bes[i], bb[i]);
			bes[i]->iface->buffer_free(bes[i], ob[i]);
		}
		engine_cuda_nccl_comm_free(c);
	}
	/* one rank of a one-rank job, the multi-process entry points */
	unsigned char id[128];
	CHECK(engine_cuda_nccl_unique_id(id, &err) == 0, "%s", err.msg);
	c = NULL;
	CHECK(engine_cuda_nccl_comm_init_rank(id, 1, 0, gpu, &c, &err) == 0, "%s", err.msg);
	if (c) {
		CHECK_INT(c->size, 1);
		CHECK_INT(c->first, 0);
		CHECK(c->barrier(c, &err) == 0, "%s", err.msg);
		engine_cuda_nccl_comm_free(c);
	}
	for (int i = 1; i < n; i++)
		kernels_backend_free(bes[i]);
}

/* ---- main ----------------------------------------------------------------------- */

typedef struct device_test {
	const char *name;
	void (*fn)(void);
} device_test;

/* test_cuda_ops             every check
 * test_cuda_ops --list      the device tests' names
 * test_cuda_ops --no-device-tests   the checks that need no device
 * test_cuda_ops NAME...     those device tests alone (scripts/gpu-check.sh runs
 *                           each in its own process) */
int main(int argc, char **argv)
{
	static const device_test tests[] = {
		{"buffers_and_copies", buffers_and_copies},
		{"matmul_every_type", matmul_every_type},
		{"matmul_column_shard", matmul_column_shard},
		{"matvec_multi_mixed", matvec_multi_mixed},
		{"matmul_backward_every_type", matmul_backward_every_type},
		{"embedding_every_type", embedding_every_type},
		{"embedding_backward_repeats", embedding_backward_repeats},
		{"norms_rope_elementwise", norms_rope_elementwise},
		{"graphs_replay", graphs_replay},
		{"cross_entropy_both", cross_entropy_both},
		{"lora_both", lora_both},
		{"attention_paged", attention_paged},
		{"attention_packed_and_backward", attention_packed_and_backward},
		{"sample_rows", sample_rows},
		{"nccl_comm", nccl_comm},
	};
	const size_t ntests = sizeof tests / sizeof tests[0];
	int basics = 1, devices = 1;
	if (argc > 1 && strcmp(argv[1], "--list") == 0) {
		for (size_t i = 0; i < ntests; i++)
			printf("%s\n", tests[i].name);
		return 0;
	}
	if (argc > 1 && strcmp(argv[1], "--no-device-tests") == 0)
		devices = 0;
	else if (argc > 1)
		basics = 0;
	owl_err err = {0};
	/* The object beside the test binaries' folder ($BUILD/libowl_cuda.so)
	 * unless the caller names one. */
	char exe[4096];
	ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 64);
	if (len > 0) {
		exe[len] = 0;
		char *slash = strrchr(exe, '/');
		if (slash) {
			strcpy(slash, "/../libowl_cuda.so");
			setenv("OWL_CUDA_LIB", exe, 0);
		}
	}
	/* Dequantised bands of 16 KiB: the products of the small test matrices
	 * are then summed (or written) over several bands, as a model's are. */
	setenv("OWL_CUDA_BAND_BYTES", "16384", 0);
	engine_gpu_info info;
	engine_gpu_probe(&info);
	gpu_count = info.device_count;
	if (gpu_count > 0 && engine_cuda_backend_new(0, &gpu, &err) != 0) {
		printf("FAIL cuda_backend_new: %d devices, yet: %s\n", gpu_count, err.msg);
		return 1;
	}
	if (kernels_cpu_backend_new(0, &cpu, &err)) {
		printf("FAIL cpu_backend: %s\n", err.msg);
		return 1;
	}
	if (basics) {
		RUN_TEST(object_loads_and_exports);
		RUN_TEST(other_interface_refused);
		RUN_TEST(device_reader_matches_host);
		RUN_TEST(missing_device_named);
	}
	if (!gpu)
		printf("no CUDA device: %s\n", info.detail);
	for (size_t i = 0; i < ntests && devices; i++) {
		int named = argc == 1;
		for (int a = 1; a < argc && !named; a++)
			named = strcmp(argv[a], tests[i].name) == 0;
		if (!named)
			continue;
		if (!gpu) {
			printf("SKIP %s: no CUDA device\n", tests[i].name);
			continue;
		}
		test_current_name = tests[i].name;
		test_current_failed = 0;
		tests[i].fn();
		if (test_current_failed)
			test_total_failed++;
		else
			printf("PASS %s\n", tests[i].name);
		fflush(stdout);
	}
	kernels_backend_free(gpu);
	kernels_backend_free(cpu);
	TEST_MAIN_END();
}
