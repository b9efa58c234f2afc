/* AdamW, clipping by the global norm and the learning-rate schedule, as
 * PyTorch and Hugging Face compute them, so that a run here and the same
 * run there take the same steps. */
#include "train/train.h"

#include <math.h>

void train_adamw_update(float *p, const float *g, float *m, float *v, size_t n, float lr,
			const train_adamw_opts *o, int64_t t)
{
	/* The scalars in double, as Python computes them, then used in f32
	 * like torch's tensors. */
	double bc1 = 1.0 - pow((double)o->beta1, (double)t);
	double bc2 = 1.0 - pow((double)o->beta2, (double)t);
	float step_size = (float)((double)lr / bc1);
	float bc2_sqrt = (float)sqrt(bc2);
	float decay = (float)(1.0 - (double)lr * (double)o->weight_decay);
	float b1 = o->beta1, b2 = o->beta2, eps = o->eps;
	for (size_t i = 0; i < n; i++) {
		float gi = g[i];
		p[i] *= decay;
		m[i] += (1.0f - b1) * (gi - m[i]);
		v[i] = v[i] * b2 + (1.0f - b2) * gi * gi;
		float denom = sqrtf(v[i]) / bc2_sqrt + eps;
		p[i] -= step_size * (m[i] / denom);
	}
}

double train_sum_squares(const float *x, size_t n)
{
	double s = 0;
	for (size_t i = 0; i < n; i++)
		s += (double)x[i] * (double)x[i];
	return s;
}

float train_clip_factor(double norm, float max_norm)
{
	if (max_norm <= 0)
		return 1.0f;
	double c = (double)max_norm / (norm + 1e-6);
	return c < 1.0 ? (float)c : 1.0f;
}

float train_lr_at(const train_schedule *s, int64_t step)
{
	if (step < s->warmup)
		return (float)((double)s->lr * (double)step / (double)(s->warmup > 1 ? s->warmup : 1));
	int64_t span = s->total - s->warmup;
	double progress = (double)(step - s->warmup) / (double)(span > 1 ? span : 1);
	if (progress > 1)
		progress = 1;
	return (float)((double)s->lr * 0.5 * (1.0 + cos(M_PI * progress)));
}
