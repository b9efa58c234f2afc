#!/usr/bin/env bash
# LoRA training on the CUDA backend (--device cuda), on every machine: the
# CUDA kernels built against the host emulator of CUDA (tests/cuda-emu/,
# $OWL_BUILD/libowl_cuda_emu.so, named by OWL_CUDA_LIB) run the trainer with
# the adapter's values and gradients mirrored on the device. One step's loss
# and LoRA gradients (owl-lora-grad, from a trained adapter: A and B both
# non-zero) equal the CPU's within a float tolerance, with dropout, micro-
# batches, recomputed activations and a Q8_0 GGUF base; the base stays
# bit-identical; a few `owl train` steps on --device cuda give the CPU run's
# losses and an adapter close to its, which owl run serves; a Q8_0 base
# trains on the device too. Without a GPU `--device cuda` is refused with the
# reason; `auto` trains on the CPU. The arithmetic on a real GPU is
# scripts/gpu-check.sh's.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
GRAD="$OWL_BUILD/owl-lora-grad"
EMU="$OWL_BUILD/libowl_cuda_emu.so"

if [ ! -f "$EMU" ]; then
  fail emulator_built "$EMU is missing (make builds it)"
  exit 0
fi

"$FX" --out "$T/base" --seed 7 --std-scale 3 --gguf Q8_0 --gguf-license apache-2.0 --quiet
owl pull "$T/base" --name tiny
expect_rc pull_base 0
owl pull "$T/base/model.gguf" --name tiny-q8
expect_rc pull_q8_base 0

write_memorisation_set "$T/mem.jsonl"

# ---- refusals and the default --------------------------------------------------
TRAIN=(--data "$T/mem.jsonl" --max-steps 3 --lr 1e-2 --batch 2 --grad-accum 2 --seq-len 32
  --dropout 0.1 --warmup 0 --rank 8 --targets all --checkpoint-every 0)
owl train tiny@1 "${TRAIN[@]}" --out t-bad --device gpu
expect_rc train_unknown_device_is_a_usage_error 2
expect_contains train_unknown_device_names_the_choices "$ERR" "use auto, cpu, cuda or cuda:N"
if [ ! -e /dev/nvidiactl ]; then
  owl train tiny@1 "${TRAIN[@]}" --out t-nogpu --device cuda
  expect_rc train_cuda_without_gpu_fails 1
  expect_contains train_cuda_without_gpu_says_why "$ERR" "no GPU to run on"
fi

# ---- owl train: the CPU run, the same run on the emulated device ---------------
# run_id OUT: the run id `owl train` printed.
run_id() { sed -n 's/^run \([^:]*\):.*/\1/p' <<<"$1"; }
owl train tiny@1 "${TRAIN[@]}" --out t-cpu --device cpu
expect_rc train_on_cpu 0
CPU_RUN="$OWL_HOME/runs/$(run_id "$OUT")"
owl train tiny@1 "${TRAIN[@]}" --out t-auto --device auto
expect_rc train_auto 0
AUTO_RUN="$OWL_HOME/runs/$(run_id "$OUT")"
# auto trains on the CPU: the very same losses, bit for bit.
cmp -s <(grep -o '"loss": [^,]*' "$CPU_RUN/metrics.jsonl") \
  <(grep -o '"loss": [^,]*' "$AUTO_RUN/metrics.jsonl") \
  && pass train_auto_is_the_cpu || fail train_auto_is_the_cpu "the losses differ"
OWL_CUDA_LIB="$EMU" owl train tiny@1 "${TRAIN[@]}" --out t-cuda --device cuda
expect_rc train_on_emulated_cuda 0
CUDA_RUN="$OWL_HOME/runs/$(run_id "$OUT")"

# close NAME TOL A B: the two runs' per-step losses agree within TOL (relative).
close_losses() {
  python3 - "$3/metrics.jsonl" "$4/metrics.jsonl" "$2" >"$T/.cmp" <<'EOF'
import json, sys
a, b = ([json.loads(x)["loss"] for x in open(p) if '"loss"' in x] for p in sys.argv[1:3])
tol = float(sys.argv[3])
if len(a) != len(b) or not a:
    print(f"{len(a)} and {len(b)} steps"); sys.exit(1)
d = max(abs(x - y) / abs(x) for x, y in zip(a, b))
print(f"{len(a)} steps, losses {['%.5f' % x for x in a]}: max relative diff {d:.3g} (tolerance {tol})")
sys.exit(0 if d <= tol else 1)
EOF
  [ $? = 0 ] && pass "$1" || fail "$1" "$(cat "$T/.cmp")"
  echo "  $1: $(cat "$T/.cmp")"
}
close_losses train_cuda_losses_equal_cpu 1e-4 "$CPU_RUN" "$CUDA_RUN"

# The two adapters: every value within 2% of the learning rate of the CPU's.
# AdamW moves an element by about lr per step whatever its gradient's size,
# so gradients near 0 that differ in the last bits still move alike; an
# element that went the other way would differ by about 2 lr.
python3 - "$CPU_RUN/adapter/adapter_model.safetensors" "$CUDA_RUN/adapter/adapter_model.safetensors" 1e-2 >"$T/.cmp" <<'EOF'
import json, struct, sys
def load(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    out = {}
    for k, v in h.items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        assert v["dtype"] == "F32", v["dtype"]
        out[k] = struct.unpack(f"<{(e - s) // 4}f", b[8 + n + s:8 + n + e])
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
if a.keys() != b.keys():
    print("the tensors differ"); sys.exit(1)
m = max(abs(x) for t in a.values() for x in t)
d = max(abs(x - y) for k in a for x, y in zip(a[k], b[k]))
lr = float(sys.argv[3])
print(f"{len(a)} tensors: max |diff| {d:.3g} of max |value| {m:.3g} (tolerance {0.02 * lr:.3g})")
sys.exit(0 if d <= 0.02 * lr else 1)
EOF
[ $? = 0 ] && pass train_cuda_adapter_equals_cpu || fail train_cuda_adapter_equals_cpu "$(cat "$T/.cmp")"
echo "  train_cuda_adapter_equals_cpu: $(cat "$T/.cmp")"

# The adapter trained on the device is registered and served, on the CPU and
# on the emulated device alike.
owl run tiny@1 "Who wrote Hamlet?"$'\n' --adapter t-cuda@1 --temperature 0 --max-tokens 6
expect_rc run_serves_cuda_trained_adapter 0
SERVED=$OUT
owl run tiny@1 "Who wrote Hamlet?"$'\n' --adapter t-cpu@1 --temperature 0 --max-tokens 6
expect_eq cuda_trained_adapter_generates_as_cpu_trained "$SERVED" "$OUT"
OWL_CUDA_LIB="$EMU" owl run tiny@1 "Who wrote Hamlet?"$'\n' --adapter t-cuda@1 --temperature 0 \
  --max-tokens 6 --device cuda
expect_eq cuda_trained_adapter_served_on_cuda "$OUT" "$SERVED"

# ---- one step's loss and gradients: CPU against the emulated device ------------
TOK=1,200,37,400,5,99,300,2,77,150,420,11,8,9,10,11,12,13
LAB=200,37,400,5,99,300,2,-1,150,420,11,-1,9,-1,11,12,13,-1
SEG=0,0,0,0,0,0,0,0,1,1,1,1,2,2,2,2,2,2
# grad NAME MODEL ARGS...: owl-lora-grad on the CPU and on the emulated
# device, from the CPU run's adapter; the loss sums within 1e-5 (relative),
# every gradient within 1e-4 of the largest |gradient|, the base unchanged,
# and the loss served on the device with the weights equals the trainer's.
grad() {
  local name=$1 model=$2
  shift 2
  "$GRAD" "$model" --adapter "$CPU_RUN/adapter" --r 8 --alpha 16 --targets all --tokens $TOK \
    --labels $LAB --seg $SEG "$@" --device cpu >"$T/$name.cpu.json" 2>"$T/$name.cpu.err" &&
    OWL_CUDA_LIB="$EMU" "$GRAD" "$model" --adapter "$CPU_RUN/adapter" --r 8 --alpha 16 \
      --targets all --tokens $TOK --labels $LAB --seg $SEG "$@" --device cuda \
      >"$T/$name.cuda.json" 2>"$T/$name.cuda.err"
  if [ $? != 0 ]; then
    fail "$name" "owl-lora-grad failed: $(tail -n 2 "$T/$name.cpu.err" "$T/$name.cuda.err")"
    return
  fi
  python3 - "$T/$name.cpu.json" "$T/$name.cuda.json" >"$T/.cmp" <<'EOF'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
bad = []
for k in ("frozen",):
    if a[k] is not True or b[k] is not True:
        bad.append(f"frozen: cpu {a[k]}, cuda {b[k]}")
if a["count"] != b["count"]:
    bad.append(f"count {a['count']} vs {b['count']}")
loss = {}
for k in ("loss_sum", "eval_loss_sum"):
    if k in a:
        loss[k] = abs(a[k] - b[k]) / abs(a[k])
        if loss[k] > 1e-5:
            bad.append(f"{k} {a[k]} vs {b[k]}")
# Serving on the device with a copy of the weights gives the trainer's loss
# (the CPU's serving of a quantised base rounds its activations to 8 bits,
# so the CPU's serving loss is not the reference here).
if "serve_loss_sum" in b:
    loss["cuda serve vs eval"] = abs(b["serve_loss_sum"] - b["eval_loss_sum"]) / abs(b["eval_loss_sum"])
    if loss["cuda serve vs eval"] > 1e-5:
        bad.append(f"cuda serve_loss_sum {b['serve_loss_sum']} vs eval {b['eval_loss_sum']}")
if a["grads"].keys() != b["grads"].keys():
    bad.append("the tensors differ")
m = max(abs(x) for g in a["grads"].values() for x in g)
d = max(abs(x - y) for k in a["grads"] for x, y in zip(a["grads"][k], b["grads"][k]))
if not m > 0 or d > 1e-4 * m:
    bad.append(f"gradients: max |diff| {d:.3g} of max |grad| {m:.3g}")
print(", ".join(f"{k} rel diff {v:.2g}" for k, v in loss.items()) +
      f"; {len(a['grads'])} gradients: max |diff| {d:.3g} of max |grad| {m:.3g}" +
      ("; " + "; ".join(bad) if bad else ""))
sys.exit(1 if bad else 0)
EOF
  [ $? = 0 ] && pass "$name" || fail "$name" "$(cat "$T/.cmp")"
  echo "  $name: $(cat "$T/.cmp")"
}
grad grad_cuda_f32_dropout_micro "$T/base" --dropout 0.1 --dropout-seed 5 --micro 2 --eval
grad grad_cuda_q8_0_ckpt "$T/base/model.gguf" --ckpt --eval

# --steps updates host weights in place with the kernel table's AdamW: CPU only.
OWL_CUDA_LIB="$EMU" "$GRAD" "$T/base" --r 8 --alpha 16 --tokens $TOK --labels $LAB --steps 1 \
  --device cuda >/dev/null 2>"$T/steps.err"
[ $? = 1 ] && grep -q "run it on the CPU" "$T/steps.err" && pass grad_steps_on_device_refused \
  || fail grad_steps_on_device_refused "$(cat "$T/steps.err")"

# ---- a quantised base trains on the device --------------------------------------
Q8=(--data "$T/mem.jsonl" --max-steps 2 --lr 1e-2 --batch 2 --grad-accum 1 --seq-len 32
  --dropout 0 --warmup 0 --rank 4 --checkpoint-every 0)
owl train tiny-q8@1 "${Q8[@]}" --out q8-cpu
expect_rc train_q8_0_on_cpu 0
Q8_CPU="$OWL_HOME/runs/$(run_id "$OUT")"
OWL_CUDA_LIB="$EMU" owl train tiny-q8@1 "${Q8[@]}" --out q8-cuda --device cuda
expect_rc train_q8_0_on_emulated_cuda 0
Q8_CUDA="$OWL_HOME/runs/$(run_id "$OUT")"
close_losses train_q8_0_cuda_losses_equal_cpu 1e-4 "$Q8_CPU" "$Q8_CUDA"
