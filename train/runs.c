/* A run's metrics read back, and its loss curves drawn as an SVG. */
#include "train/train.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void push(train_point **v, size_t *n, int64_t step, double loss)
{
	/* Grown at every power of two. */
	if ((*n & (*n - 1)) == 0)
		*v = owl_xrealloc(*v, (*n ? 2 * *n : 1) * sizeof **v);
	(*v)[(*n)++] = (train_point){step, loss};
}

int train_curves_read(const char *metrics_path, train_curves *out, owl_err *err)
{
	memset(out, 0, sizeof *out);
	if (!owl_path_exists(metrics_path))
		return 0;
	char *data = NULL;
	size_t len = 0;
	int rc = owl_read_file(metrics_path, (size_t)1 << 30, &data, &len, err);
	if (rc)
		return rc;
	for (char *p = data, *nl; p < data + len; p = nl + 1) {
		nl = memchr(p, '\n', (size_t)(data + len - p));
		if (!nl)
			nl = data + len;
		json_t *j = json_loadb(p, (size_t)(nl - p), 0, NULL);
		json_t *step = json_object_get(j, "step"), *loss = json_object_get(j, "loss"),
		       *ev = json_object_get(j, "eval_loss");
		if (json_is_integer(step) && json_is_number(loss))
			push(&out->train, &out->ntrain, json_integer_value(step), json_number_value(loss));
		if (json_is_integer(step) && json_is_number(ev))
			push(&out->eval, &out->neval, json_integer_value(step), json_number_value(ev));
		json_decref(j);
	}
	free(data);
	return 0;
}

void train_curves_release(train_curves *c)
{
	free(c->train);
	free(c->eval);
	memset(c, 0, sizeof *c);
}

static void polyline(owl_buf *b, const train_point *v, size_t n, int64_t s0, int64_t s1,
		     double lo, double hi, const char *color)
{
	const double X0 = 70, X1 = 780, Y0 = 40, Y1 = 360;
	owl_buf_printf(b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", color);
	for (size_t i = 0; i < n; i++) {
		if (!isfinite(v[i].loss))
			continue;
		double x = X0 + (X1 - X0) * (s1 > s0 ? (double)(v[i].step - s0) / (double)(s1 - s0) : 0.5);
		double y = Y1 - (Y1 - Y0) * (hi > lo ? (v[i].loss - lo) / (hi - lo) : 0.5);
		owl_buf_printf(b, "%.1f,%.1f ", x, y);
	}
	owl_buf_printf(b, "\"/>\n");
}

char *train_curves_svg(const train_curves *c, const char *title)
{
	int64_t s0 = INT64_MAX, s1 = INT64_MIN;
	double lo = INFINITY, hi = -INFINITY;
	const train_point *sets[2] = {c->train, c->eval};
	size_t ns[2] = {c->ntrain, c->neval};
	for (int k = 0; k < 2; k++)
		for (size_t i = 0; i < ns[k]; i++) {
			const train_point *p = &sets[k][i];
			s0 = p->step < s0 ? p->step : s0;
			s1 = p->step > s1 ? p->step : s1;
			if (isfinite(p->loss)) {
				lo = p->loss < lo ? p->loss : lo;
				hi = p->loss > hi ? p->loss : hi;
			}
		}
	if (s0 > s1)
		s0 = 0, s1 = 1;
	if (!(lo <= hi))
		lo = 0, hi = 1;
	/* Some room above and below the curves. */
	double pad = (hi - lo) * 0.05 + 1e-9;
	lo -= pad, hi += pad;
	owl_buf b;
	owl_buf_init(&b, (size_t)64 << 20);
	owl_buf_printf(&b, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"800\" height=\"400\" "
		       "viewBox=\"0 0 800 400\" font-family=\"sans-serif\" font-size=\"12\">\n"
		       "<rect width=\"800\" height=\"400\" fill=\"white\"/>\n");
	owl_buf_printf(&b, "<text x=\"400\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">");
	for (const char *t = title ? title : ""; *t; t++) {
		if (*t == '<')
			owl_buf_printf(&b, "&lt;");
		else if (*t == '&')
			owl_buf_printf(&b, "&amp;");
		else if (*t == '>')
			owl_buf_printf(&b, "&gt;");
		else
			owl_buf_append(&b, t, 1);
	}
	owl_buf_printf(&b, "</text>\n<g stroke=\"#999\"><line x1=\"70\" y1=\"360\" x2=\"780\" y2=\"360\"/>"
		       "<line x1=\"70\" y1=\"40\" x2=\"70\" y2=\"360\"/></g>\n");
	for (int i = 0; i <= 4; i++) {
		double y = 360 - 80.0 * i, v = lo + (hi - lo) * i / 4.0;
		double x = 70 + 177.5 * i;
		int64_t st = s0 + (int64_t)llround((double)(s1 - s0) * i / 4.0);
		owl_buf_printf(&b, "<text x=\"64\" y=\"%.0f\" text-anchor=\"end\">%.3g</text>"
			       "<line x1=\"70\" y1=\"%.0f\" x2=\"780\" y2=\"%.0f\" stroke=\"#eee\"/>\n", y + 4,
			       v, y, y);
		owl_buf_printf(&b, "<text x=\"%.1f\" y=\"378\" text-anchor=\"middle\">%lld</text>\n", x,
			       (long long)st);
	}
	owl_buf_printf(&b, "<text x=\"425\" y=\"396\" text-anchor=\"middle\">step</text>\n"
		       "<text x=\"16\" y=\"200\" transform=\"rotate(-90 16 200)\" "
		       "text-anchor=\"middle\">loss</text>\n");
	polyline(&b, c->train, c->ntrain, s0, s1, lo, hi, "#1f77b4");
	polyline(&b, c->eval, c->neval, s0, s1, lo, hi, "#d62728");
	owl_buf_printf(&b, "<g><line x1=\"600\" y1=\"52\" x2=\"625\" y2=\"52\" stroke=\"#1f77b4\" "
		       "stroke-width=\"2\"/><text x=\"630\" y=\"56\">train loss (%zu)</text>\n"
		       "<line x1=\"600\" y1=\"70\" x2=\"625\" y2=\"70\" stroke=\"#d62728\" "
		       "stroke-width=\"2\"/><text x=\"630\" y=\"74\">eval loss (%zu)</text></g>\n</svg>\n",
		       c->ntrain, c->neval);
	char *s = owl_buf_steal(&b);
	owl_buf_release(&b);
	return s;
}
