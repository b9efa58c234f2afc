/* The CPU backend's sampling op: the reference of kernels_sample_row's
 * contract (kernels.h), which the CUDA backend's sample.cu follows step by
 * step: candidates in the order (logit descending, index ascending), the
 * top_k cut, softmax over the k, the top_p prefix, one draw with u. */
#include "engine/kernels/kernels.h"

#include <math.h>
#include <stdlib.h>

typedef struct cand {
	float logit;
	int32_t id;
} cand;

static int cand_order(const void *a, const void *b)
{
	const cand *x = a, *y = b;
	if (x->logit != y->logit)
		return x->logit > y->logit ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

static int32_t argmax_row(const float *row, int vocab)
{
	int32_t best = 0;
	for (int v = 1; v < vocab; v++)
		if (row[v] > row[best])
			best = v;
	return best;
}

int cpu_sample(kernels_backend *be, int32_t *out, const float *logits, int rows, int vocab,
	       const kernels_sample_row *params, owl_err *err)
{
	if (rows < 0 || vocab <= 0)
		return owl_err_set(err, OWL_EUSAGE, "sample: %d rows of %d logits", rows, vocab);
	cand *c = NULL;
	for (int r = 0; r < rows; r++) {
		const float *row = logits + (size_t)r * vocab;
		const kernels_sample_row *p = &params[r];
		if (!(p->temperature > 0)) {
			out[r] = argmax_row(row, vocab);
			continue;
		}
		if (!c && !(c = malloc((size_t)vocab * sizeof *c)))
			return owl_err_set(err, OWL_EFAIL, "sample: cannot allocate %d candidates", vocab);
		for (int v = 0; v < vocab; v++)
			c[v] = (cand){row[v], v};
		qsort(c, (size_t)vocab, sizeof *c, cand_order);
		int k = p->top_k > 0 && p->top_k < vocab ? p->top_k : vocab;
		double z = 0;
		for (int i = 0; i < k; i++)
			z += exp(((double)c[i].logit - c[0].logit) / p->temperature);
		int m = k;
		double mass = z;
		if (p->top_p > 0 && p->top_p < 1) {
			double cum = 0;
			for (int i = 0; i < k; i++) {
				cum += exp(((double)c[i].logit - c[0].logit) / p->temperature);
				if (cum >= p->top_p * z) {
					m = i + 1;
					mass = cum;
					break;
				}
			}
		}
		double target = (double)p->u * mass, cum = 0;
		int32_t pick = c[m - 1].id;
		for (int i = 0; i < m; i++) {
			cum += exp(((double)c[i].logit - c[0].logit) / p->temperature);
			if (cum > target) {
				pick = c[i].id;
				break;
			}
		}
		out[r] = pick;
	}
	free(c);
	return 0;
}
