"""PyTorch autograd + PEFT as the oracle for owl's LoRA gradients.

  ref_train.py grad BASE_DIR ADAPTER_DIR --tokens 1,2,3 --labels 2,3,-1 [--seg 0,0,1]
                [--gguf FILE]
      Loads the base with transformers (f32, eager attention) and the adapter
      with PeftModel.from_pretrained (trainable, dropout off), runs each
      packed sample (--seg) on its own with positions from 0, sums the
      cross-entropy of the rows whose label is not -1, and prints JSON:
      loss_sum, count and the gradient of loss_sum for every lora_A and
      lora_B, named as in adapter_model.safetensors. --gguf: the base's
      matrices are replaced by those of a GGUF of the same model (a quantised
      one: QLoRA), dequantised by the gguf package, q/k rows un-permuted.

  ref_train.py steps BASE_DIR ADAPTER_DIR --tokens ... --labels ... [--seg ...] --steps K
                [--lr LR] [--weight-decay W]
      K steps of torch.optim.AdamW on the LoRA parameters, the loss the mean
      cross-entropy over the scored rows; prints {"losses": [...]}, the loss
      before each update.

  ref_train.py compare OWL.json REF.json [--tol 1e-3]
      Every tensor's max |owl - ref| <= tol * max(max |ref|, 1e-6), the loss
      sums within tol relative, the counts equal; prints the worst tensor.
"""
import argparse
import json
import sys


def ints(s):
    return [int(t) for t in s.split(",")] if s else []


ROLES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
         "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
         "ffn_down": "mlp.down_proj"}


def load_gguf_weights(m, path):
    """Overwrites m's projections, embedding and output with the GGUF's."""
    import numpy as np
    import torch
    import gguf
    from gguf.quants import dequantize

    cfg = m.config
    heads = {"attn_q": cfg.num_attention_heads, "attn_k": cfg.num_key_value_heads}
    sd = m.state_dict()
    for t in gguf.GGUFReader(path).tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        parts = t.name.split(".")
        if t.name == "token_embd.weight":
            key = "model.embed_tokens.weight"
        elif t.name == "output.weight":
            key = "lm_head.weight"
        elif parts[0] == "blk" and parts[2] in ROLES:
            key = f"model.layers.{parts[1]}.{ROLES[parts[2]]}.weight"
            if parts[2] in heads:
                # GGUF row i holds the Hugging Face row src(i) (llama.cpp's permute)
                rows = w.shape[0]
                hd = rows // heads[parts[2]]
                i = np.arange(rows)
                src = (i // hd) * hd + (i % hd % 2) * (hd // 2) + (i % hd) // 2
                hf = np.empty_like(w)
                hf[src] = w
                w = hf
        else:
            continue
        with torch.no_grad():
            sd[key].copy_(torch.from_numpy(w.reshape(sd[key].shape)))


def peft_model(a):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(a.base, torch_dtype=torch.float32,
                                             attn_implementation="eager")
    if getattr(a, "gguf", None):
        load_gguf_weights(m, a.gguf)
    pm = PeftModel.from_pretrained(m, a.adapter, is_trainable=True)
    pm.eval()  # dropout off; autograd still records
    return pm


def loss_sum(pm, a):
    import torch

    toks, labels = ints(a.tokens), ints(a.labels)
    seg = ints(a.seg) if a.seg else [0] * len(toks)
    total = torch.zeros((), dtype=torch.float64)
    count, i = 0, 0
    while i < len(toks):
        j = i
        while j < len(toks) and seg[j] == seg[i]:
            j += 1
        logits = pm(input_ids=torch.tensor([toks[i:j]])).logits[0]
        lab = torch.tensor(labels[i:j])
        keep = lab >= 0
        if keep.any():
            total = total + torch.nn.functional.cross_entropy(
                logits[keep], lab[keep], reduction="sum").double()
            count += int(keep.sum())
        i = j
    return total, count


def steps(a):
    import torch

    pm = peft_model(a)
    params = [p for n, p in pm.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=a.weight_decay)
    losses = []
    for _ in range(a.steps):
        opt.zero_grad()
        total, count = loss_sum(pm, a)
        (total / count).backward()
        opt.step()
        losses.append(float(total) / count)
    json.dump({"losses": losses}, sys.stdout)


def compare_steps(a):
    o, r = json.load(open(a.owl)), json.load(open(a.ref))
    x, y = o["losses"], r["losses"]
    err = max(abs(p - q) / max(1.0, abs(q)) for p, q in zip(x, y)) if len(x) == len(y) else 1e9
    print(f"owl {[round(v, 5) for v in x]}\nref {[round(v, 5) for v in y]}\nworst relative error {err:.3g}")
    moved = y[-1] < y[0] - 1e-3
    if not moved:
        print("the reference loss did not fall: the check would prove little")
    sys.exit(0 if err <= a.tol and moved and o.get("frozen", True) else 1)


def grad(a):
    pm = peft_model(a)
    total, count = loss_sum(pm, a)
    total.backward()
    grads = {}
    for name, p in pm.named_parameters():
        if "lora_" in name:
            grads[name.replace(".default", "")] = [float(v) for v in p.grad.reshape(-1)]
    json.dump({"loss_sum": float(total), "count": count, "grads": grads}, sys.stdout)


def compare(a):
    o, r = json.load(open(a.owl)), json.load(open(a.ref))
    bad = []
    if o["count"] != r["count"]:
        bad.append(f"count {o['count']} != {r['count']}")
    if abs(o["loss_sum"] - r["loss_sum"]) > a.tol * max(1.0, abs(r["loss_sum"])):
        bad.append(f"loss_sum {o['loss_sum']} != {r['loss_sum']}")
    if set(o["grads"]) != set(r["grads"]):
        bad.append(f"tensors differ: owl only {sorted(set(o['grads']) - set(r['grads']))[:3]}, "
                   f"ref only {sorted(set(r['grads']) - set(o['grads']))[:3]}")
    worst, wname, zero = 0.0, "", 0
    for name in sorted(set(o["grads"]) & set(r["grads"])):
        x, y = o["grads"][name], r["grads"][name]
        if len(x) != len(y):
            bad.append(f"{name}: {len(x)} values, ref {len(y)}")
            continue
        scale = max(max(abs(v) for v in y), 1e-6)
        zero += scale <= 1e-6
        err = max(abs(p - q) for p, q in zip(x, y)) / scale
        if err > worst:
            worst, wname = err, name
    if zero == len(r["grads"]):
        bad.append("every reference gradient is zero: the check would pass vacuously")
    print(f"{len(r['grads'])} tensors, loss_sum {o['loss_sum']:.6g} (ref {r['loss_sum']:.6g}), "
          f"worst relative error {worst:.3g} in {wname}")
    if worst > a.tol:
        bad.append(f"worst relative error {worst:.3g} > {a.tol}")
    for b in bad:
        print(b)
    sys.exit(1 if bad else 0)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grad")
    g.add_argument("base")
    g.add_argument("adapter")
    g.add_argument("--tokens", required=True)
    g.add_argument("--labels", required=True)
    g.add_argument("--seg")
    g.add_argument("--gguf")
    st = sub.add_parser("steps")
    st.add_argument("base")
    st.add_argument("adapter")
    st.add_argument("--tokens", required=True)
    st.add_argument("--labels", required=True)
    st.add_argument("--seg")
    st.add_argument("--steps", type=int, default=10)
    st.add_argument("--lr", type=float, default=1e-3)
    st.add_argument("--weight-decay", type=float, default=0.0)
    for name in ("compare", "compare-steps"):
        c = sub.add_parser(name)
        c.add_argument("owl")
        c.add_argument("ref")
        c.add_argument("--tol", type=float, default=1e-3)
    a = p.parse_args()
    {"grad": grad, "steps": steps, "compare": compare, "compare-steps": compare_steps}[a.cmd](a)


if __name__ == "__main__":
    main()
