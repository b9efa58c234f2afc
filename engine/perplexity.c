/* Perplexity, as llama.cpp's llama-perplexity measures it: the tokens are cut
 * into chunks of n_ctx, each chunk starts with BOS (when the model uses one)
 * and only its second half is scored, so every scored token sees at least
 * half a context of history. A library flow: the CLI and a server's
 * validation job call the same function. */
#include "engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int engine_perplexity(engine_model *m, const engine_tokenizer *tok, const int32_t *ids, size_t n,
		      const engine_ppl_opts *o, engine_ppl_progress progress, void *progress_ctx,
		      engine_ppl_result *res, owl_err *err)
{
	memset(res, 0, sizeof *res);
	int n_ctx = o->n_ctx;
	if (n_ctx < 8)
		return owl_err_set(err, OWL_EUSAGE, "a perplexity context of %d tokens is too short "
				   "(at least 8)", n_ctx);
	size_t nchunks = n / (size_t)n_ctx;
	if (o->max_chunks > 0 && nchunks > (size_t)o->max_chunks)
		nchunks = (size_t)o->max_chunks;
	if (nchunks == 0)
		return owl_err_set(err, OWL_EUSAGE, "the text has %zu tokens, fewer than one context "
				   "of %d", n, n_ctx);
	int vocab = engine_model_get_info(m)->vocab;
	engine_session *s = NULL;
	int rc = engine_session_new(m, n_ctx, &s, err);
	if (!rc && o->adapter)
		rc = engine_session_set_adapter(s, o->adapter, err);
	if (rc)
		return rc;
	float *logits = malloc((size_t)n_ctx * vocab * sizeof *logits);
	int32_t *chunk = malloc((size_t)n_ctx * sizeof *chunk);
	if (!logits || !chunk) {
		rc = owl_err_set(err, OWL_EFAIL, "cannot allocate the logits of %d tokens", n_ctx);
		goto out;
	}
	int bos = engine_token_bos(tok), first = n_ctx / 2;
	double nll = 0, nll2 = 0, t0 = owl_now();
	size_t count = 0;
	for (size_t ch = 0; ch < nchunks && !rc; ch++) {
		memcpy(chunk, ids + ch * (size_t)n_ctx, (size_t)n_ctx * sizeof *chunk);
		if (bos >= 0 && engine_tokenizer_adds_bos(tok))
			chunk[0] = bos;
		engine_session_truncate(s, 0);
		if ((rc = engine_forward(s, chunk, n_ctx, logits, 1, err)))
			break;
		for (int j = first; j < n_ctx - 1; j++) {
			const float *row = logits + (size_t)j * vocab;
			float mx = row[0];
			for (int v = 1; v < vocab; v++)
				if (row[v] > mx)
					mx = row[v];
			double sum = 0;
			for (int v = 0; v < vocab; v++)
				sum += exp((double)row[v] - mx);
			/* the target is the file's token, not the BOS put in its place */
			double lp = (double)row[ids[ch * (size_t)n_ctx + (size_t)j + 1]] - mx - log(sum);
			nll -= lp;
			nll2 += lp * lp;
			count++;
		}
		if (progress)
			progress(progress_ctx, ch + 1, nchunks, exp(nll / (double)count));
	}
	if (!rc) {
		double mean = nll / (double)count, var = nll2 / (double)count - mean * mean;
		res->ppl = exp(mean);
		res->ppl_error = var > 0 && count > 1 ? res->ppl * sqrt(var / (double)(count - 1)) : 0;
		res->tokens_scored = count;
		res->chunks = nchunks;
		res->seconds = owl_now() - t0;
	}
out:
	free(logits);
	free(chunk);
	engine_session_free(s);
	return rc;
}
