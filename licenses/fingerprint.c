/* Text fingerprints for recognising license files. Whitespace, case,
 * punctuation and line breaks vary between copies of the same license
 * (Markdown vs plain text, rewrapped lines), so texts are compared as sets
 * of overlapping 5-word shingles of normalised words.
 *
 * A copy of a license matches its reference's shingles nearly all; a title
 * or copyright line before it adds a few shingles at the start, which is
 * normal; a clause added or a word changed anywhere after the license began
 * adds shingles in the middle, and that makes it a different license that
 * merely resembles the reference (a Llama 3.1 text with an extra restriction
 * is not Llama 3.1). */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

static int is_word_byte(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}

static uint64_t fnv1a(uint64_t h, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		h ^= (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
		h *= 1099511628211ull;
	}
	return h;
}

size_t license_shingles(const char *text, size_t len, uint32_t **hashes, size_t **pos)
{
	size_t *start = owl_xmalloc((len / 2 + 2) * sizeof *start);
	size_t *wlen = owl_xmalloc((len / 2 + 2) * sizeof *wlen);
	size_t nwords = 0;
	for (size_t i = 0; i < len;) {
		if (!is_word_byte((unsigned char)text[i])) {
			i++;
			continue;
		}
		size_t j = i;
		while (j < len && is_word_byte((unsigned char)text[j]))
			j++;
		start[nwords] = i;
		wlen[nwords++] = j - i;
		i = j;
	}
	size_t cap = nwords > LICENSE_FP_SHINGLE ? nwords : 1;
	uint32_t *h = owl_xmalloc(cap * sizeof *h);
	size_t *p = owl_xmalloc(cap * sizeof *p);
	size_t n = 0;
	for (size_t w = 0; w + LICENSE_FP_SHINGLE <= nwords; w++) {
		uint64_t x = 14695981039346656037ull;
		for (size_t k = 0; k < LICENSE_FP_SHINGLE; k++) {
			x = fnv1a(x, text + start[w + k], wlen[w + k]);
			x = fnv1a(x, " ", 1);
		}
		if (x % LICENSE_FP_SAMPLE == 0) {
			h[n] = (uint32_t)(x >> 32);
			p[n++] = w;
		}
	}
	free(start);
	free(wlen);
	*hashes = h;
	*pos = p;
	return n;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

size_t license_fingerprint(const char *text, size_t len, uint32_t **out)
{
	size_t *pos = NULL;
	size_t n = license_shingles(text, len, out, &pos);
	free(pos);
	if (n)
		qsort(*out, n, sizeof **out, cmp_u32);
	size_t u = 0;
	for (size_t i = 0; i < n; i++)
		if (u == 0 || (*out)[u - 1] != (*out)[i])
			(*out)[u++] = (*out)[i];
	return u;
}

static int in_sorted(const uint32_t *a, size_t n, uint32_t x)
{
	size_t lo = 0, hi = n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (a[mid] == x)
			return 1;
		if (a[mid] < x)
			lo = mid + 1;
		else
			hi = mid;
	}
	return 0;
}

void license_recognise_text(const char *text, size_t len, char *id, size_t idlen, double *score,
			    int *near)
{
	uint32_t *fp = NULL;
	size_t n = license_fingerprint(text, len, &fp);
	double best = 0;
	const license_fp_ref *best_ref = NULL;
	for (size_t r = 0; r < license_fp_nrefs && n; r++) {
		const license_fp_ref *ref = &license_fp_refs[r];
		if (!ref->n)
			continue;
		size_t common = 0;
		for (size_t i = 0; i < n; i++)
			common += in_sorted(ref->hashes, ref->n, fp[i]);
		double contain = (double)common / (double)ref->n;
		double explain = (double)common / (double)n;
		double f = contain + explain > 0 ? 2 * contain * explain / (contain + explain) : 0;
		if (f > best) {
			best = f;
			best_ref = ref;
		}
	}
	free(fp);
	*score = best;
	*near = 0;
	snprintf(id, idlen, "%s", "");
	if (!best_ref || best < 0.5)
		return;
	/* Walk the text in order: shingles the reference lacks count as changes
	 * once the license has begun (the first shingle it shares). */
	uint32_t *seq = NULL;
	size_t *pos = NULL;
	size_t ns = license_shingles(text, len, &seq, &pos);
	size_t common = 0, changed = 0;
	int begun = 0;
	for (size_t i = 0; i < ns; i++) {
		if (in_sorted(best_ref->hashes, best_ref->n, seq[i])) {
			begun = 1;
			common++;
		} else if (begun) {
			changed++;
		}
	}
	free(seq);
	free(pos);
	double contain = (double)common / (double)best_ref->n;
	snprintf(id, idlen, "%s", best_ref->license_id);
	if (!(contain >= 0.97 && changed == 0))
		*near = 1;
}
