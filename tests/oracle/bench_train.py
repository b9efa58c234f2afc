"""The same LoRA training step in PyTorch + PEFT, for scripts/bench-train.sh.

  bench_train.py BASE_DIR [--r 16] [--seq 512] [--steps 3] [--threads 2] [--targets LIST]

One sample of seq tokens (pseudo-random ids), every row scored: forward,
backward and a torch.optim.AdamW step on the LoRA parameters, f32, eager
attention. Prints JSON: tokens_per_s (mean over the steps after a warm-up),
best_tokens_per_s, and peak_rss_mib.
"""
import argparse
import json
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def main():
    p = argparse.ArgumentParser()
    p.add_argument("base")
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(a.base, torch_dtype=torch.float32,
                                             attn_implementation="eager")
    cfg = LoraConfig(r=a.r, lora_alpha=2 * a.r, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=a.targets.split(","))
    pm = get_peft_model(m, cfg)
    pm.train()
    opt = torch.optim.AdamW([q for q in pm.parameters() if q.requires_grad], lr=1e-4)
    ids = torch.randint(0, m.config.vocab_size, (1, a.seq))
    times, cpu = [], []
    for k in range(a.steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        out = pm(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        if k:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"tokens_per_s": round(a.seq * len(times) / sum(times), 1),
                      "best_tokens_per_s": round(a.seq / min(times), 1),
                      "cpu_s_per_step": round(sum(cpu) / len(cpu), 3),
                      "peak_rss_mib": round(rss), "threads": a.threads}))


if __name__ == "__main__":
    main()
