"""A reference implementation of the Llama family (Llama, Mistral, Qwen2) in
plain PyTorch on the CPU, written from the architecture's definition, used by
the tests as an independent oracle for owl's logits.

Usage: ref_llama.py CHECKPOINT_DIR --tokens 1,2,3 [--all]
Prints a JSON list of logit rows (the last token's, or every token's)."""
import argparse
import json
import math
import os
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        b, e = t["data_offsets"]
        buf = bytearray(data[b:e])
        x = torch.frombuffer(buf, dtype=DTYPES[t["dtype"]]).reshape(t["shape"]) if e > b else torch.zeros(t["shape"])
        out[name] = x.to(torch.float32)
    return out


def load(dirpath):
    cfg = json.load(open(os.path.join(dirpath, "config.json")))
    idx = os.path.join(dirpath, "model.safetensors.index.json")
    w = {}
    if os.path.exists(idx):
        for f in sorted(set(json.load(open(idx))["weight_map"].values())):
            w.update(read_safetensors(os.path.join(dirpath, f)))
    else:
        w.update(read_safetensors(os.path.join(dirpath, "model.safetensors")))
    return cfg, w


def load_gguf(path):
    """A GGUF checkpoint as an HF config and HF-named f32 weights: tensors are
    dequantised by the gguf package (independent of owl) and q/k rows are put
    back from llama.cpp's interleaved order into the rotate_half order."""
    import gguf
    import numpy as np
    r = gguf.GGUFReader(path)

    def kv(key, default=None):
        f = r.fields.get(key)
        if f is None:
            return default
        v = f.parts[f.data[0]]
        return v.tolist()[0] if hasattr(v, "tolist") else v

    H = kv("llama.attention.head_count")
    KV = kv("llama.attention.head_count_kv", H)
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": kv("llama.embedding_length"),
           "num_attention_heads": H, "num_key_value_heads": KV,
           "num_hidden_layers": kv("llama.block_count"),
           "rms_norm_eps": kv("llama.attention.layer_norm_rms_epsilon", 1e-5),
           "rope_theta": kv("llama.rope.freq_base", 10000.0)}
    names = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
             "output_norm.weight": "model.norm.weight"}
    per = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
           "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
           "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
           "ffn_down": "mlp.down_proj"}
    w, rope_freqs = {}, None
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(x) for x in reversed(t.shape.tolist())]
        a = torch.from_numpy(a.reshape(shape).copy())
        if t.name == "rope_freqs.weight":
            rope_freqs = a
            continue
        if t.name.startswith("blk."):
            _, l, kind, suffix = t.name.split(".", 3)
            name = f"model.layers.{l}.{per[kind]}.{suffix}"
            if kind in ("attn_q", "attn_k"):
                n = H if kind == "attn_q" else KV
                hd = a.shape[0] // n
                a = a.reshape(n, hd // 2, 2, a.shape[1]).transpose(1, 2).reshape(a.shape)
        else:
            name = names[t.name]
        w[name] = a
    cfg["head_dim"] = kv("llama.rope.dimension_count", cfg["hidden_size"] // H)
    if "lm_head.weight" not in w:
        cfg["tie_word_embeddings"] = True
    cfg["rope_freqs"] = rope_freqs
    return cfg, w


def inv_freq(cfg, hd):
    if cfg.get("rope_freqs") is not None:
        base = cfg.get("rope_theta", 10000.0)
        f = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        return (f.to(torch.float32) / cfg["rope_freqs"])
    base = cfg.get("rope_theta", 10000.0)
    f = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    rs = cfg.get("rope_scaling")
    if rs:
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        orig = rs["original_max_position_embeddings"]
        low_wl, high_wl = orig / low, orig / high
        out = []
        for fr in f.tolist():
            wl = 2 * math.pi / fr
            if wl < high_wl:
                out.append(fr)
            elif wl > low_wl:
                out.append(fr / factor)
            else:
                s = (orig / wl - low) / (high - low)
                out.append((1 - s) * fr / factor + s * fr)
        f = torch.tensor(out, dtype=torch.float64)
    return f.to(torch.float32)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(cfg, w, tokens):
    dim, H = cfg["hidden_size"], cfg["num_attention_heads"]
    KV = cfg.get("num_key_value_heads", H)
    hd = cfg.get("head_dim") or dim // H
    eps = cfg.get("rms_norm_eps", 1e-6)
    arch = cfg["architectures"][0]
    window = cfg.get("sliding_window") if (arch == "MistralForCausalLM" or cfg.get("use_sliding_window")) else None
    n = len(tokens)

    def norm(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    x = w["model.embed_tokens.weight"][torch.tensor(tokens)]
    pos = torch.arange(n, dtype=torch.float32)
    ang = pos[:, None] * inv_freq(cfg, hd)[None, :]
    cos = torch.cat([ang.cos(), ang.cos()], -1)
    sin = torch.cat([ang.sin(), ang.sin()], -1)
    mask = torch.full((n, n), float("-inf")).triu(1)
    if window:
        for i in range(n):
            for j in range(n):
                if i - j >= window:
                    mask[i, j] = float("-inf")
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = norm(x, w[p + "input_layernorm.weight"])
        q = h @ w[p + "self_attn.q_proj.weight"].T
        k = h @ w[p + "self_attn.k_proj.weight"].T
        v = h @ w[p + "self_attn.v_proj.weight"].T
        if p + "self_attn.q_proj.bias" in w:
            q = q + w[p + "self_attn.q_proj.bias"]
            k = k + w[p + "self_attn.k_proj.bias"]
            v = v + w[p + "self_attn.v_proj.bias"]
        q = q.view(n, H, hd).transpose(0, 1)
        k = k.view(n, KV, hd).transpose(0, 1)
        v = v.view(n, KV, hd).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(H // KV, dim=0)
        v = v.repeat_interleave(H // KV, dim=0)
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + mask, dim=-1) @ v
        x = x + a.transpose(0, 1).reshape(n, H * hd) @ w[p + "self_attn.o_proj.weight"].T
        h = norm(x, w[p + "post_attention_layernorm.weight"])
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ w[p + "mlp.down_proj.weight"].T
    x = norm(x, w["model.norm.weight"])
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    if cfg.get("tie_word_embeddings"):
        head = w["model.embed_tokens.weight"]
    return x @ head.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--all", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    cfg, w = load_gguf(a.dir) if a.dir.endswith(".gguf") else load(a.dir)
    tokens = [int(t) for t in a.tokens.split(",")]
    with torch.no_grad():
        logits = forward(cfg, w, tokens)
    rows = logits if a.all else logits[-1:]
    json.dump([[round(float(v), 7) for v in r] for r in rows], sys.stdout)


if __name__ == "__main__":
    main()
