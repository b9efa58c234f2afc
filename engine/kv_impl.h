/* Private to engine/: the paged KV pool (engine/kv.c) and the forward
 * pass's working memory, which the pool owns because both are sized by the
 * same model, context and thread count. */
#ifndef OWL_ENGINE_KV_IMPL_H
#define OWL_ENGINE_KV_IMPL_H

#include "internal.h"
#include "lora.h"

enum {
	KV_BLOCK_TOKENS = 32, /* tokens per block */
	KV_MAX_RANKS = 16,
	KV_UBATCH = 64,       /* tokens per micro-batch of the forward pass */
	KV_MAX_LORA_RANK = 512,
};

/* One sequence: its block table and the tokens its cache holds (the
 * tokens name the blocks in the prefix cache). */
typedef struct kv_seq {
	int used;
	int len;          /* tokens in the cache */
	int nblocks, cap; /* blocks in the table, table capacity */
	int32_t *blocks;
	int32_t *tokens;  /* [cap * KV_BLOCK_TOKENS] */
	uint64_t salt;    /* what else decides the keys (the adapter): part of the block hashes */
	const engine_adapter *adapter; /* applied to its projections, or NULL */
} kv_seq;

/* Per block: how many sequences hold it, and, once full and registered in
 * the prefix cache, the hash of its tokens and of every block before it. */
typedef struct kv_block {
	int32_t ref;
	int hashed;
	uint64_t hash;
	uint64_t last_use; /* for evicting cached blocks nobody holds, oldest first */
} kv_block;

/* One rank's working buffers for a micro-batch of KV_UBATCH tokens, carved
 * out of one buffer of the rank's backend: its own residual stream x, the
 * normalised input xn, projections, and the partial output part that the
 * all-reduce sums in place. xl gathers the rows that want logits (rank 0). */
typedef struct kv_rank_ws {
	kernels_buffer *buf;
	float *x, *xn, *xl, *q, *kb, *vb, *att, *gate, *up, *part;
	float *lora_tmp; /* [KV_UBATCH][KV_MAX_LORA_RANK]: an adapter's bottleneck */
	kernels_scratch attn;
} kv_rank_ws;

/* A rank's copy of the micro-batch's layout in its backend's memory, made
 * only for a backend whose memory the host cannot address (engine/kv.c). */
typedef struct kv_rank_meta {
	kernels_buffer *buf;     /* NULL: the rank reads the host arrays */
	int32_t *tokens, *pos, *slots, *blocks;
	kernels_attn_seg *segs;  /* their blocks point into blocks */
	float *logits;           /* rank 0: [KV_UBATCH][vocab] */
	size_t blocks_cap;       /* int32 entries of blocks */
	size_t off_pos, off_slots, off_segs, off_blocks, off_logits; /* bytes into buf */
} kv_rank_meta;

struct engine_kv {
	engine_model *m;
	kernels_kv_type type;
	int n_blocks, max_seq_tokens, threads_per_rank;
	/* per rank: its kv heads' rows, [block][layer][KV_BLOCK_TOKENS][row],
	 * in two buffers of the rank's backend */
	int rank_kv0[KV_MAX_RANKS], rank_nkv[KV_MAX_RANKS];
	kernels_buffer *kbuf[KV_MAX_RANKS], *vbuf[KV_MAX_RANKS];
	uint8_t *k[KV_MAX_RANKS], *v[KV_MAX_RANKS];
	size_t pool_bytes[KV_MAX_RANKS], block_stride[KV_MAX_RANKS];
	kv_block *blk;
	int32_t *free_list; /* blocks returned to the pool, reused first */
	int nfree, next_fresh;
	uint64_t clock;
	/* prefix cache: open addressing, hash -> block (-1 empty, -2 deleted) */
	int32_t *table;
	int table_cap, table_deleted; /* slots; tombstones among them */
	int32_t *block_tokens; /* [n_blocks][KV_BLOCK_TOKENS]: a cached block's tokens */
	kv_seq *seqs;
	int nseqs;
	/* forward working memory, allocated once; positions, slots and
	 * segments are the batch's layout, read by every rank */
	int32_t *pos, *slots;
	kernels_attn_seg *segs;
	const engine_adapter **seg_adapter; /* per segment: its sequence's adapter */
	kv_rank_ws ws[KV_MAX_RANKS];
	kv_rank_meta meta[KV_MAX_RANKS];
	kernels_attn_seg *stage_segs; /* host staging of a device rank's segments */
	int32_t *stage_blocks;        /* and of the block tables they name */
	/* Graphs of decoding steps on a backend that records them (CUDA):
	 * graph[n] replays the ops of a micro-batch of n sequences, one token
	 * each, every one wanting logits, on one device rank without adapters
	 * (engine/forward.c). A shape is recorded at its second step: the first
	 * runs the ops, which sets up what they allocate on first use. */
	int graphs_on;
	kernels_graph *graph[KV_UBATCH + 1];
	uint8_t graph_seen[KV_UBATCH + 1];
	uint64_t graph_launches, graph_recordings;
};

/* One layer of rank r's cache as the kernels see it. */
kernels_kv_layer kv_layer(const engine_kv *kv, int r, int layer);

/* Gives seq room for n more tokens: blocks are taken from the pool, and a
 * shared or cached last block is copied first (copy on write). Fails with
 * OWL_EFAIL, changing nothing, when the pool has too few free blocks. */
int kv_seq_reserve(engine_kv *kv, int seq, int n, owl_err *err);
/* After a forward pass wrote n tokens of seq: records them and registers
 * the blocks they filled in the prefix cache. */
void kv_seq_commit(engine_kv *kv, int seq, const int32_t *tokens, int n);

#endif
