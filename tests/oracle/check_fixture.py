"""Checks a checkpoint written by owl-fixture with the reference Python readers:
Hugging Face `tokenizers`, `safetensors` and `gguf` (PyPI). Prints one line per
check, "PASS name" or "FAIL name: why", and exits non-zero when any failed.

usage: check_fixture.py DIR [--gguf TYPE]
"""
import json
import os
import sys

import numpy as np

failures = 0
TAG = os.environ.get("FX_TAG", "fixture")


def check(name, ok, why=""):
    global failures
    if ok:
        print(f"PASS {TAG}_{name}")
    else:
        failures += 1
        print(f"FAIL {TAG}_{name}: {why}")


DTYPES = {}


def load_weights(d):
    # through torch: numpy has no bfloat16
    from safetensors.torch import load_file

    idx = os.path.join(d, "model.safetensors.index.json")
    files, index = ["model.safetensors"], None
    if os.path.exists(idx):
        index = json.load(open(idx))
        files = sorted(set(index["weight_map"].values()))
    out = {}
    for f in files:
        for k, v in load_file(os.path.join(d, f)).items():
            DTYPES[k] = str(v.dtype).replace("torch.", "")
            out[k] = v.float().numpy()
            out[k + "@bytes"] = v.numel() * v.element_size()
    nbytes = sum(out.pop(k) for k in [k for k in out if k.endswith("@bytes")])
    return out, index, nbytes


def as_f32(a):
    return np.asarray(a, dtype=np.float32)


def check_tokenizer(d, cfg):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    tc = json.load(open(os.path.join(d, "tokenizer_config.json")))
    check("tokenizer_vocab_size", tok.get_vocab_size(with_added_tokens=True) == cfg["vocab_size"],
          f"tokenizer has {tok.get_vocab_size(with_added_tokens=True)}, config says {cfg['vocab_size']}")
    texts = [
        "Hello world! The owl hunts at night.",
        "Caf\u00e9 cr\u00e8me br\u00fbl\u00e9e \U0001F989 \u4f60\u597d\u3002 \u041f\u0440\u0438\u0432\u0435\u0442",
        "    def f(x):\n\treturn x * 42  # spaces   and\ttabs\n\n",
        "Numbers 3.14159 and 1,000,000 and 2024-03-15.",
        "An unseen script: \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35 \U0001F9EA\U0001F52C",
    ]
    ok_rt = True
    why = ""
    for t in texts:
        enc = tok.encode(t)
        dec = tok.decode(enc.ids, skip_special_tokens=True)
        if dec != t:
            ok_rt = False
            why = f"{t!r} decoded as {dec!r}"
        if any(i >= cfg["vocab_size"] for i in enc.ids):
            ok_rt = False
            why = f"id out of range in {enc.ids}"
    check("tokenizer_round_trip", ok_rt, why)
    enc = tok.encode("The owl is a quiet bird that hunts at night.", add_special_tokens=False)
    # A trained BPE compresses its own training prose well below one token per byte.
    check("tokenizer_compresses", len(enc.ids) < 30, f"{len(enc.ids)} tokens: {enc.tokens}")
    bos = tc["bos_token"]
    eos = tc["eos_token"]
    check("tokenizer_bos_id", tok.token_to_id(bos) == cfg["bos_token_id"],
          f"{bos} is {tok.token_to_id(bos)}, config bos {cfg['bos_token_id']}")
    eos_ids = cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], list) else [cfg["eos_token_id"]]
    check("tokenizer_eos_id", tok.token_to_id(eos) in eos_ids, f"{eos} is {tok.token_to_id(eos)}, config {eos_ids}")
    # special tokens are single tokens
    enc = tok.encode(f"{eos}x{eos}", add_special_tokens=False)
    check("tokenizer_special_single", enc.ids[0] == tok.token_to_id(eos) and enc.ids[-1] == tok.token_to_id(eos),
          f"{enc.tokens}")
    if tc.get("add_bos_token"):
        enc = tok.encode("hi")
        check("tokenizer_adds_bos", enc.ids[0] == cfg["bos_token_id"], f"{enc.ids}")
    model = json.load(open(os.path.join(d, "tokenizer.json")))["model"]
    if model.get("byte_fallback"):
        enc = tok.encode("\U0001F9EA", add_special_tokens=False)
        # the normaliser prepends U+2581; the emoji itself falls back to its 4 UTF-8 bytes
        check("tokenizer_byte_fallback", enc.tokens == ["\u2581", "<0xF0>", "<0x9F>", "<0xA7>", "<0xAA>"],
              f"{enc.tokens}")
    return tok


def check_weights(d, cfg):
    w, index, nbytes = load_weights(d)
    h, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    hd = cfg.get("head_dim", h // cfg["num_attention_heads"])
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    ff, V = cfg["intermediate_size"], cfg["vocab_size"]
    want = {"model.embed_tokens.weight": (V, h), "model.norm.weight": (h,)}
    if not cfg["tie_word_embeddings"]:
        want["lm_head.weight"] = (V, h)
    bias = cfg.get("attention_bias", False) or cfg["model_type"] == "qwen2"
    for i in range(L):
        p = f"model.layers.{i}."
        want[p + "input_layernorm.weight"] = (h,)
        want[p + "post_attention_layernorm.weight"] = (h,)
        want[p + "self_attn.q_proj.weight"] = (q, h)
        want[p + "self_attn.k_proj.weight"] = (kv, h)
        want[p + "self_attn.v_proj.weight"] = (kv, h)
        want[p + "self_attn.o_proj.weight"] = (h, q)
        want[p + "mlp.gate_proj.weight"] = (ff, h)
        want[p + "mlp.up_proj.weight"] = (ff, h)
        want[p + "mlp.down_proj.weight"] = (h, ff)
        if bias:
            for x, n in (("q", q), ("k", kv), ("v", kv)):
                want[p + f"self_attn.{x}_proj.bias"] = (n,)
    got = {k: tuple(v.shape) for k, v in w.items()}
    check("weights_names_shapes", got == want,
          f"missing {sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}, "
          f"wrong {[k for k in want if k in got and got[k] != want[k]][:5]}")
    check("weights_dtype", set(DTYPES.values()) == {cfg["torch_dtype"]}, f"{set(DTYPES.values())}")
    emb = as_f32(w["model.embed_tokens.weight"])
    norm = as_f32(w["model.norm.weight"])
    check("weights_not_degenerate", 0.01 < emb.std() < 0.2 and abs(norm.mean() - 1) < 0.1 and np.isfinite(emb).all(),
          f"embed std {emb.std()}, norm mean {norm.mean()}")
    if index is not None:
        check("index_total_size", index["metadata"]["total_size"] == nbytes,
              f"{index['metadata']['total_size']} vs {nbytes}")
        check("index_weight_map", set(index["weight_map"]) == set(w), "names differ")
    return w


def permute(x, n_head):
    return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def check_gguf(d, cfg, tok, w, gtype):
    from gguf import GGUFReader
    from gguf.quants import dequantize, quantize

    r = GGUFReader(os.path.join(d, "model.gguf"))

    def field(k):
        f = r.fields.get(k)
        if f is None:
            return None
        v = f.parts[f.data[0]]
        if f.types[0].name == "STRING":
            return bytes(v).decode()
        return v[0].item()

    check("gguf_arch", field("general.architecture") == "llama", f"{field('general.architecture')}")
    keys = {"llama.embedding_length": cfg["hidden_size"], "llama.block_count": cfg["num_hidden_layers"],
            "llama.attention.head_count": cfg["num_attention_heads"],
            "llama.attention.head_count_kv": cfg["num_key_value_heads"],
            "llama.feed_forward_length": cfg["intermediate_size"],
            "llama.context_length": cfg["max_position_embeddings"]}
    bad = {k: (field(k), v) for k, v in keys.items() if field(k) != v}
    check("gguf_llama_keys", not bad, f"{bad}")
    check("gguf_rope_base", abs(field("llama.rope.freq_base") - cfg["rope_theta"]) < 1e-3 * cfg["rope_theta"],
          f"{field('llama.rope.freq_base')}")
    f = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(f.parts[i]).decode() for i in f.data]
    vocab = tok.get_vocab(with_added_tokens=True)
    inv = {i: t for t, i in vocab.items()}
    check("gguf_tokens", len(tokens) == cfg["vocab_size"] and all(inv.get(i) == t for i, t in enumerate(tokens)),
          f"{len(tokens)} tokens")
    spm = json.load(open(os.path.join(d, "tokenizer.json")))["model"].get("byte_fallback")
    check("gguf_tokenizer_model", field("tokenizer.ggml.model") == ("llama" if spm else "gpt2"),
          f"{field('tokenizer.ggml.model')}")
    if not spm:
        check("gguf_merges", "tokenizer.ggml.merges" in r.fields, "no merges")
    check("gguf_bos_eos", field("tokenizer.ggml.bos_token_id") == cfg["bos_token_id"], "bos differs")
    check("gguf_chat_template", field("tokenizer.chat_template") ==
          json.load(open(os.path.join(d, "tokenizer_config.json")))["chat_template"], "template differs")
    for t in r.tensors:
        if t.data_offset % 32:
            check("gguf_alignment", False, f"{t.name} at {t.data_offset}")
            break
    else:
        check("gguf_alignment", True)

    tol = {"F32": 0, "F16": 1e-3, "BF16": 1e-2, "Q8_0": 0.02, "Q4_0": 0.2, "Q4_1": 0.15}[gtype]
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    for i in range(cfg["num_hidden_layers"]):
        for g, hf in (("attn_norm.weight", "input_layernorm.weight"), ("attn_q.weight", "self_attn.q_proj.weight"),
                      ("attn_k.weight", "self_attn.k_proj.weight"), ("attn_v.weight", "self_attn.v_proj.weight"),
                      ("attn_output.weight", "self_attn.o_proj.weight"),
                      ("ffn_norm.weight", "post_attention_layernorm.weight"), ("ffn_gate.weight", "mlp.gate_proj.weight"),
                      ("ffn_up.weight", "mlp.up_proj.weight"), ("ffn_down.weight", "mlp.down_proj.weight"),
                      ("attn_q.bias", "self_attn.q_proj.bias"), ("attn_k.bias", "self_attn.k_proj.bias"),
                      ("attn_v.bias", "self_attn.v_proj.bias")):
            names[f"blk.{i}.{g}"] = f"model.layers.{i}.{hf}"
    seen = set()
    worst = (0.0, "")
    ok = True
    for t in r.tensors:
        if t.name == "rope_freqs.weight":
            continue
        hf = names.get(t.name)
        if hf is None or hf not in w:
            ok = False
            worst = (float("inf"), f"unexpected tensor {t.name}")
            continue
        seen.add(hf)
        ref = as_f32(w[hf])
        if ".attn_q." in t.name:
            ref = permute(ref, cfg["num_attention_heads"])
        elif ".attn_k." in t.name:
            ref = permute(ref, cfg["num_key_value_heads"])
        got = dequantize(t.data, t.tensor_type).reshape(ref.shape).astype(np.float32)
        if len(ref.shape) == 2 and t.tensor_type.name == gtype and gtype in ("Q8_0", "Q4_0", "Q4_1"):
            # the reference quantiser in the gguf package must give the same blocks
            want = quantize(ref, t.tensor_type)
            same = float(np.mean(np.asarray(t.data).reshape(-1) == want.reshape(-1)))
            need = 1.0 if gtype != "Q4_0" else 0.99  # Q4_0's reference rounding depends on FMA
            if same < need:
                ok = False
                worst = (float("inf"), f"{t.name}: only {same:.4f} of the bytes match gguf.quants")
        # relative to the tensor's scale: quantisation error is a fraction of the block max
        err = float(np.abs(got - ref).max() / (np.abs(ref).max() + 1e-12))
        if err > tol and not (len(ref.shape) == 1 and err <= 1e-6):
            ok = False
        if err > worst[0]:
            worst = (err, t.name)
    check("gguf_tensors_match_safetensors", ok and seen == set(w), f"worst {worst}, missing {set(w) - seen}")


def main():
    d = sys.argv[1]
    gtype = None
    if "--gguf" in sys.argv:
        gtype = sys.argv[sys.argv.index("--gguf") + 1].upper()
    cfg = json.load(open(os.path.join(d, "config.json")))
    tok = check_tokenizer(d, cfg)
    w = check_weights(d, cfg)
    if gtype:
        check_gguf(d, cfg, tok, w, gtype)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
