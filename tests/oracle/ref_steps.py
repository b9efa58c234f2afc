"""PEFT + torch.optim.AdamW as the oracle for owl train's steps.

  ref_steps.py BASE_DIR INIT_ADAPTER_DIR DATA.jsonl --steps N --lr LR [--warmup N]
               [--weight-decay W] [--max-grad-norm G]

Loads the base with transformers and the adapter with
PeftModel.from_pretrained(is_trainable=True), builds the samples of a
{"prompt", "completion"} JSONL file as owl does (the prompt's tokens, the
completion's, the tokenizer's eos_token; the loss on the completion and the
end token), and takes N optimiser steps, each over every sample: the loss is
the mean cross-entropy over all the trained tokens of the step, then
clip_grad_norm_, torch.optim.AdamW (betas 0.9, 0.999, eps 1e-8) and
transformers' get_cosine_schedule_with_warmup. Prints the N step losses as a
JSON list. Dropout is off (owl train --dropout 0).
"""
import argparse
import json

import torch
from peft import PeftModel
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup


def samples(base, data):
    tok = Tokenizer.from_file(base + "/tokenizer.json")
    cfg = json.load(open(base + "/tokenizer_config.json"))
    eos = cfg["eos_token"]
    eos = eos["content"] if isinstance(eos, dict) else eos
    eos_id = tok.token_to_id(eos)
    out = []
    for line in open(data):
        if not line.strip():
            continue
        r = json.loads(line)
        p = tok.encode(r["prompt"], add_special_tokens=False).ids
        c = tok.encode(r["completion"], add_special_tokens=False).ids + [eos_id]
        ids = p + c
        labels = [-100] * len(p) + c
        labels[0] = -100
        out.append((torch.tensor([ids]), torch.tensor([labels])))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("init")
    ap.add_argument("data")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    m = AutoModelForCausalLM.from_pretrained(a.base, torch_dtype=torch.float32,
                                             attn_implementation="eager")
    pm = PeftModel.from_pretrained(m, a.init, is_trainable=True)
    pm.train()
    for mod in pm.modules():  # no dropout anywhere: owl's steps are deterministic
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    params = [p for n, p in pm.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=a.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, a.warmup, a.steps)
    data = samples(a.base, a.data)
    losses = []
    for _ in range(a.steps):
        opt.zero_grad()
        total = sum(int((lab[0, 1:] != -100).sum()) for _, lab in data)
        step_loss = 0.0
        for ids, lab in data:
            logits = pm(input_ids=ids).logits[0, :-1]
            target = lab[0, 1:]
            ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=-100,
                                                   reduction="sum")
            (ce / total).backward()
            step_loss += float(ce)
        if a.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, a.max_grad_norm)
        opt.step()
        sched.step()
        losses.append(step_loss / total)
    print(json.dumps(losses))


if __name__ == "__main__":
    main()
