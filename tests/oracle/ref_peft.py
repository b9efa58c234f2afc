"""Hugging Face transformers + peft as the oracle for owl's LoRA adapters.

  ref_peft.py make BASE_DIR OUT_DIR --r 4 [--alpha 8] [--rslora] [--targets q_proj,v_proj]
              [--seed N] [--std 0.05] [--dora] [--bias all] [--modules-to-save lm_head]
      Builds an adapter with peft itself (LoraConfig, get_peft_model,
      save_pretrained). PEFT starts B at zero, which would make the adapter a
      no-op that proves nothing: every lora_A and lora_B is overwritten with
      random non-zero values (seeded) before saving.

  ref_peft.py logits BASE_DIR ADAPTER_DIR --tokens 1,2,3 [--all]
      Loads the base with transformers and the adapter with
      PeftModel.from_pretrained (unmerged), and prints the logits as a JSON
      list of rows (the last token's, or every token's), in f32.
"""
import argparse
import json
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM


def base_model(path):
    m = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32,
                                             attn_implementation="eager")
    m.eval()
    return m


def make(a):
    torch.manual_seed(a.seed)
    m = base_model(a.base)
    cfg = LoraConfig(r=a.r, lora_alpha=a.alpha, use_rslora=a.rslora,
                     target_modules=a.targets if a.regex else a.targets.split(","),
                     lora_dropout=0.0, bias=a.bias, use_dora=a.dora,
                     modules_to_save=a.modules_to_save.split(",") if a.modules_to_save else None,
                     task_type="CAUSAL_LM")
    pm = get_peft_model(m, cfg)
    g = torch.Generator().manual_seed(a.seed)
    n = 0
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * a.std)
                n += 1
    if n == 0:
        sys.exit("ref_peft.py: the adapter has no lora_A/lora_B parameters")
    pm.save_pretrained(a.out)


def logits(a):
    m = base_model(a.base)
    pm = PeftModel.from_pretrained(m, a.adapter)
    pm.eval()
    ids = torch.tensor([[int(t) for t in a.tokens.split(",")]])
    with torch.no_grad():
        out = pm(input_ids=ids).logits[0]
    rows = out if a.all else out[-1:]
    json.dump([[round(float(v), 7) for v in r] for r in rows], sys.stdout)
    print()


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make")
    mk.add_argument("base")
    mk.add_argument("out")
    mk.add_argument("--r", type=int, required=True)
    mk.add_argument("--alpha", type=float, default=8)
    mk.add_argument("--rslora", action="store_true")
    mk.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    mk.add_argument("--regex", action="store_true", help="--targets is one regular expression")
    mk.add_argument("--seed", type=int, default=1)
    mk.add_argument("--std", type=float, default=0.1)
    mk.add_argument("--dora", action="store_true")
    mk.add_argument("--bias", default="none")
    mk.add_argument("--modules-to-save", default="")
    lg = sub.add_parser("logits")
    lg.add_argument("base")
    lg.add_argument("adapter")
    lg.add_argument("--tokens", required=True)
    lg.add_argument("--all", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    make(a) if a.cmd == "make" else logits(a)


if __name__ == "__main__":
    main()
