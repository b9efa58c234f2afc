/* train: LoRA fine-tuning on the engine's model and kernels.
 *
 *   datasets     JSONL in the formats people have ({"text"}, {"prompt",
 *                "completion"}, Alpaca, chat {"messages"}), tokenized with
 *                the model's tokenizer, with a mask of the trained tokens
 *   packing      samples packed into micro-batches of --batch rows of
 *                --seq-len tokens, each sample its own segment
 *   optimiser    AdamW (PyTorch's update), clipping by the global norm,
 *                cosine schedule with linear warmup (Hugging Face's)
 *   the loop     gradient accumulation, eval loss, checkpoints, resume
 *   output       a PEFT LoRA adapter (adapter_config.json and
 *                adapter_model.safetensors), metrics.jsonl, an SVG of the
 *                loss curves
 *
 * The gradients themselves come from the engine (engine_train_step). Nothing
 * here prints, exits, or knows about the registry: cmd/ registers what the
 * loop wrote. */
#ifndef OWL_TRAIN_H
#define OWL_TRAIN_H

#include "engine/engine.h"

/* ---- random numbers (train/data.c) ----------------------------------------- */

/* splitmix64: the one generator of the module (shuffles, dropout seeds), so
 * that a seed and a state of 8 bytes say everything a resume needs. */
uint64_t train_rng_next(uint64_t *state);

/* ---- datasets (train/data.c) ----------------------------------------------- */

typedef struct train_sample {
	int32_t *tokens;  /* the sample as the model reads it, BOS and end token included */
	uint8_t *trained; /* trained[i]: tokens[i] is predicted and its loss counts (trained[0] = 0) */
	int n;
	int line;         /* its line in the file, from 1 */
} train_sample;

typedef struct train_data_opts {
	int train_on_inputs; /* loss on prompts and user turns too */
	int skip_bad;        /* skip malformed lines (counted) instead of failing */
	int max_tokens;      /* a sample may hold at most this many tokens (--seq-len + 1) */
} train_data_opts;

typedef struct train_dataset {
	train_sample *samples;
	size_t n;
	size_t lines;          /* lines of the file, empty ones included */
	size_t skipped;        /* malformed lines skipped under skip_bad */
	char first_skipped[512]; /* what was wrong with the first of them */
	char sha256[65];       /* of the file's bytes */
	char format[16];       /* text, prompt, alpaca, chat, or mixed */
	int64_t tokens;        /* input tokens of every sample (n - 1 each) */
	int64_t trained_tokens; /* of which scored */
} train_dataset;

/* Reads a JSONL file: one JSON object per line, empty lines ignored. Each
 * object is one of
 *   {"text": T}                                     every token trained
 *   {"prompt": P, "completion": C}                  C trained
 *   {"instruction": I, "input": X?, "output": O}    Alpaca's prompt, O trained
 *   {"messages": [{"role", "content"}, ...]}        the model's chat template,
 *                                                   assistant turns trained
 * (o->train_on_inputs trains every token). The model's end token follows
 * every sample but a chat one, whose template ends each turn itself. A
 * malformed line fails with its line number and what is wrong (OWL_EUSAGE),
 * or is skipped and counted with skip_bad; a file with no sample left, or a
 * sample longer than max_tokens, is an error too. The caller frees *out
 * with train_dataset_free. */
int train_dataset_load(const char *path, const engine_tokenizer *tok, const train_data_opts *o,
		       train_dataset **out, owl_err *err);
/* The same from bytes in memory; label names them in messages. */
int train_dataset_parse(const char *label, const char *data, size_t len,
			const engine_tokenizer *tok, const train_data_opts *o, train_dataset **out,
			owl_err *err);
void train_dataset_free(train_dataset *d); /* accepts NULL */
/* Moves round(fraction * n) samples (at least 1, leaving at least 1),
 * chosen by seed, from d into a new dataset *eval_out (--eval-fraction). */
int train_dataset_split(train_dataset *d, double fraction, uint64_t seed,
			train_dataset **eval_out, owl_err *err);

/* ---- packing (train/data.c) -------------------------------------------------- */

/* One micro-batch: samples order[first .. first + count) of an epoch. */
typedef struct train_micro {
	size_t first, count;
	int tokens; /* input tokens (each sample's n - 1) */
	int scored; /* of which have a target */
} train_micro;

/* The order of epoch e: a permutation of d's samples drawn from seed and e
 * (shuffle 0: the file's order). *order is malloc'd. */
void train_epoch_order(const train_dataset *d, uint64_t seed, int epoch, int shuffle,
		       uint32_t **order);
/* Packs samples in that order into micro-batches of `rows` rows of seq_len
 * tokens: a sample goes into the current row when it fits, else into the
 * next row; a micro-batch ends when a sample would need row rows + 1.
 * Samples never straddle rows. *out is malloc'd. */
void train_pack(const train_dataset *d, const uint32_t *order, int seq_len, int rows,
		train_micro **out, size_t *n);

/* Buffers for one micro-batch of at most cap tokens. */
typedef struct train_batch_buf {
	int cap;
	int32_t *tokens, *targets, *seg, *pos;
} train_batch_buf;
void train_batch_buf_init(train_batch_buf *b, int cap);
void train_batch_buf_release(train_batch_buf *b);
/* Fills buf and *out with micro-batch mb: sample k of it is segment k,
 * positions restart at 0, targets[i] = tokens[i + 1] of the same sample
 * where that token is trained, else -1. */
void train_batch_fill(const train_dataset *d, const uint32_t *order, const train_micro *mb,
		      train_batch_buf *buf, uint64_t dropout_seed, engine_train_batch *out);

/* ---- optimiser and schedule (train/optim.c) ------------------------------------- */

typedef struct train_adamw_opts {
	float beta1, beta2, eps, weight_decay;
} train_adamw_opts;

/* One AdamW update of n parameters as PyTorch's torch.optim.AdamW makes it:
 * p *= 1 - lr * wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
 * p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). t counts from 1. */
void train_adamw_update(float *p, const float *g, float *m, float *v, size_t n, float lr,
			const train_adamw_opts *o, int64_t t);
/* Sum of squares in double (the global norm is the root of the sum over tensors). */
double train_sum_squares(const float *x, size_t n);
/* The factor gradients are multiplied by when clipping a global norm to
 * max_norm (PyTorch's clip_grad_norm_: max_norm / (norm + 1e-6), at most 1;
 * 1 when max_norm <= 0). */
float train_clip_factor(double norm, float max_norm);

typedef struct train_schedule {
	float lr;        /* peak learning rate */
	int64_t warmup;  /* steps of linear warmup */
	int64_t total;   /* steps of the run */
} train_schedule;
/* The learning rate of step (from 0), as Hugging Face's
 * get_cosine_schedule_with_warmup: lr * step / warmup during warmup, then
 * lr * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup))). */
float train_lr_at(const train_schedule *s, int64_t step);

/* ---- PEFT adapter files (train/peft.c) -------------------------------------------- */

/* adapter_config.json with the fields PEFT 0.13 writes, for o's rank,
 * alpha, rsLoRA, dropout and targets. malloc'd JSON text. */
char *train_peft_config_json(const engine_lora_opts *o, const char *base_model,
			     const char *revision);
/* Writes dir/adapter_config.json and dir/adapter_model.safetensors (F32,
 * PEFT's key names, in the order given) from n tensors: names[i], shape
 * rows[i] x cols[i], data[i] in PEFT's layout. dir must exist. */
int train_peft_write_files(const char *dir, const engine_lora_opts *o, const char *base_model,
			   const char *revision, size_t n, const char *const *names,
			   const int *rows, const int *cols, const float *const *data, owl_err *err);
/* Parses "q_proj,v_proj" or "all" into engine_lora_opts.targets; an unknown
 * name is an error naming it and the known ones. */
int train_parse_targets(const char *list, unsigned *targets, owl_err *err);

/* The weights' adapter files in dir (which must exist): PEFT's layout,
 * whatever the base's (GGUF q/k rows are put back in Hugging Face order). */
int train_peft_save(const char *dir, const engine_lora_weights *w, const char *base_model,
		    const char *revision, owl_err *err);

/* ---- the loop (train/loop.c) ----------------------------------------------------------- */

typedef struct train_opts {
	engine_lora_opts lora;
	int epochs;            /* passes over the data, when max_steps is 0 */
	int64_t max_steps;     /* optimiser steps; 0: the epochs decide */
	float lr;              /* peak learning rate */
	int batch;             /* rows of seq_len tokens per micro-batch */
	int grad_accum;        /* micro-batches per optimiser step */
	int seq_len;
	int64_t warmup;        /* steps of linear warmup; < 0: 3% of the steps */
	train_adamw_opts adam; /* betas, eps, weight decay */
	float max_grad_norm;   /* <= 0: no clipping */
	uint64_t seed;         /* the data order, the dropout masks and A's initialisation */
	int64_t checkpoint_every; /* steps; 0: only when stopped */
	int64_t eval_every;    /* steps; 0: at the end only */
	int checkpoint_activations;
	const char *init_adapter; /* a PEFT adapter folder to start from instead of PEFT's
				     initialisation (its rank and targets must be these), or NULL */
} train_opts;

/* What one step did, for progress lines and metrics.jsonl. */
typedef struct train_progress {
	int64_t step, total;   /* step counts from 1 */
	int epoch;             /* from 0 */
	double loss;           /* mean over the step's scored tokens */
	float lr;
	double grad_norm;      /* before clipping */
	int64_t tokens;        /* input tokens of the step */
	double tok_per_s;      /* of this step */
	double elapsed_s;      /* of the whole run, earlier sessions included */
	double eta_s;
	int has_eval;
	double eval_loss;
} train_progress;

typedef struct train_hooks {
	void (*step)(void *ctx, const train_progress *p); /* after every step; may be NULL */
	int (*stop)(void *ctx); /* asked after every step: non-zero stops with a checkpoint */
	void *ctx;
} train_hooks;

typedef struct train_result {
	int64_t steps, total_steps;
	double first_loss, last_loss;
	int has_eval;
	double eval_loss;      /* the last eval loss */
	int64_t tokens;        /* input tokens trained on */
	double seconds;
	int stopped;           /* hooks->stop stopped it: run_dir/checkpoint holds the state */
} train_result;

/* The optimiser steps a run of d with o takes (the epochs packed as the
 * loop packs them). */
int64_t train_total_steps(const train_dataset *d, const train_opts *o);

/* Trains LoRA weights on m. run_dir (which must exist) receives
 * metrics.jsonl (one line per step, one per eval), checkpoint/ every
 * o->checkpoint_every steps and when stopped (the adapter, the optimiser's
 * moments, the schedule's step, the data position and the RNG), and at the
 * end adapter/ (train_peft_save; base_model names the base in its config).
 * resume: continues from run_dir/checkpoint, taking the same steps an
 * uninterrupted run takes. The base model is never written. */
int train_run(engine_model *m, const train_dataset *train, const train_dataset *eval,
	      const train_opts *o, const char *run_dir, int resume, const char *base_model,
	      const train_hooks *hooks, train_result *res, owl_err *err);

/* ---- merging (train/merge.c) ------------------------------------------------------------ */

/* Writes out_file: the safetensors file base_file of a checkpoint with the
 * PEFT LoRA adapter of adapter_dir merged into every projection it targets
 * (W += s * B A, in f32, stored back in W's dtype: f32, f16 or bf16), the
 * other tensors and the metadata as they are. *merged is increased by the
 * tensors changed. An A or B that does not fit its weight is an error. */
int train_merge_file(const char *base_file, const char *adapter_dir, const char *out_file,
		     size_t *merged, owl_err *err);
/* The tensors (A and B each count) of an adapter folder; 0 when unreadable. */
size_t train_adapter_tensor_count(const char *adapter_dir);

/* ---- runs: metrics and the loss curves (train/runs.c) ----------------------------- */

typedef struct train_point {
	int64_t step;
	double loss;
} train_point;

typedef struct train_curves {
	train_point *train, *eval;
	size_t ntrain, neval;
} train_curves;

/* Reads a metrics.jsonl: lines with "loss" are the train curve, lines with
 * "eval_loss" the eval curve. A missing file is an empty curve. */
int train_curves_read(const char *metrics_path, train_curves *out, owl_err *err);
void train_curves_release(train_curves *c);
/* An SVG (malloc'd text) of both curves against the step, with axes. */
char *train_curves_svg(const train_curves *c, const char *title);

#endif
