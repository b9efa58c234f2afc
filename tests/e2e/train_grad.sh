#!/usr/bin/env bash
# LoRA gradients through the frozen model against PyTorch autograd + PEFT
# (tests/oracle/ref_train.py): the adapter's A and B are PEFT's own, random
# and non-zero (at B = 0 the gradient of A vanishes and a check passes
# vacuously); owl's one-step gradients (tests/tools/owl-lora-grad) must equal
# autograd's for a few target sets (all seven, rsLoRA), packed samples with
# ignored targets, samples longer than a band of rows, Qwen2 biases, a
# Mistral sliding window, an f16 base, and a GGUF base of the same weights
# (q/k rows permuted). Then the equivalences: recomputed activations equal
# the tape, micro-batches add up to the batch, packed equals unpacked, the
# base is bit-identical after the steps; ten AdamW steps give PEFT's
# losses; dropout; QLoRA on Q8_0/Q4_0/Q4_1
# GGUF bases against the oracle on the same weights dequantised; tp > 1 is
# refused.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
GRAD="$OWL_BUILD/owl-lora-grad"
REF="$OWL_ROOT/tests/oracle/ref_train.py"
MAKE="$OWL_ROOT/tests/oracle/ref_peft.py"
PY=$("$OWL_ROOT/scripts/pyenv.sh" 2>"$T/pyenv.err") || { fail peft_available "scripts/pyenv.sh failed: $(tail -3 "$T/pyenv.err")"; exit 1; }
if ! "$PY" -c 'import peft, transformers' 2>"$T/imp.err"; then
  fail peft_available "transformers/peft do not import: $(tail -3 "$T/imp.err")"
  exit 1
fi

# Three packed samples, the end of each not scored, some rows inside ignored.
TOK=1,200,37,400,5,99,300,2,77,150,420,11,8,9,10,11,12,13
LAB=200,37,400,5,99,300,2,-1,150,420,11,-1,9,-1,11,12,13,-1
SEG=0,0,0,0,0,0,0,0,1,1,1,1,2,2,2,2,2,2
# Two samples of 150 and 40 tokens: more than one band of 64 rows.
LONG_TOK=$(python3 -c 'print(",".join(str((i * 37 + 11) % 500 + 3) for i in range(190)))')
LONG_LAB=$(python3 -c 'l=[(i*37+11)%500+3 for i in range(190)]; print(",".join(str(l[i+1]) if i not in (149,189) else "-1" for i in range(190)))')
LONG_SEG=$(python3 -c 'print(",".join("0" if i < 150 else "1" for i in range(190)))')

# check NAME OWL.json REF.json [TOL]
check() {
  "$PY" "$REF" compare "$2" "$3" --tol "${4:-1e-3}" >"$T/.cmp" 2>&1 && pass "$1" || fail "$1" "$(cat "$T/.cmp")"
}

# case NAME BASE_DIR "PEFT ARGS" "OWL ARGS" TOKENS LABELS SEG [GGUF]: PEFT's
# gradients, owl's on the safetensors base (and on the GGUF beside it).
case_() {
  local name=$1 base=$2 peft=$3 owl=$4 tok=$5 lab=$6 seg=$7
  # shellcheck disable=SC2086
  "$PY" "$MAKE" make "$base" "$T/$name" $peft >/dev/null 2>"$T/$name.err" || { fail "grad_$name" "ref_peft.py make: $(tail -3 "$T/$name.err")"; return; }
  "$PY" "$REF" grad "$base" "$T/$name" --tokens "$tok" --labels "$lab" --seg "$seg" >"$T/$name.ref.json" 2>"$T/$name.err" || { fail "grad_$name" "ref_train.py grad: $(tail -3 "$T/$name.err")"; return; }
  local path label
  for path in "$base" "$base/model.gguf"; do
    [ -e "$path" ] || continue
    label="grad_${name}_$([ "$path" = "$base" ] && echo safetensors || echo gguf)"
    # shellcheck disable=SC2086
    "$GRAD" "$path" --adapter "$T/$name" $owl --tokens "$tok" --labels "$lab" --seg "$seg" >"$T/$label.json" 2>"$T/$label.err" || { fail "$label" "$(cat "$T/$label.err")"; continue; }
    check "$label" "$T/$label.json" "$T/$name.ref.json"
  done
}

"$FX" --out "$T/base" --seed 21 --preset tiny --std-scale 2 --gguf F32 >/dev/null
ATT="--targets q_proj,k_proj,v_proj,o_proj"
ALL7=q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj

case_ r4_attention "$T/base" "--r 4 --alpha 8 $ATT --seed 1" "--r 4 --alpha 8 $ATT" "$TOK" "$LAB" "$SEG"
case_ r8_all_rslora "$T/base" "--r 8 --alpha 16 --rslora --targets $ALL7 --seed 2" "--r 8 --alpha 16 --rslora --targets all" "$TOK" "$LAB" "$SEG"
case_ r16_qv_long "$T/base" "--r 16 --alpha 32 --targets q_proj,v_proj --seed 3" "--r 16 --alpha 32 --targets q_proj,v_proj" "$LONG_TOK" "$LONG_LAB" "$LONG_SEG"
case_ r2_mlp "$T/base" "--r 2 --alpha 4 --targets gate_proj,up_proj,down_proj --seed 4" "--r 2 --alpha 4 --targets gate_proj,up_proj,down_proj" "$TOK" "$LAB" "$SEG"

"$FX" --out "$T/qwen2" --seed 23 --preset tiny --std-scale 2 --arch qwen2 >/dev/null
case_ qwen2_biases "$T/qwen2" "--r 4 --alpha 8 --targets $ALL7 --seed 5" "--r 4 --alpha 8 --targets all" "$TOK" "$LAB" "$SEG"
"$FX" --out "$T/mistral" --seed 25 --preset tiny --std-scale 2 --arch mistral --sliding-window 4 >/dev/null
case_ mistral_window "$T/mistral" "--r 4 --alpha 8 $ATT --seed 6" "--r 4 --alpha 8 $ATT" "$TOK" "$LAB" "$SEG"
"$FX" --out "$T/f16" --seed 27 --preset tiny --std-scale 2 --dtype f16 >/dev/null
case_ f16_base "$T/f16" "--r 4 --alpha 8 --targets $ALL7 --seed 7" "--r 4 --alpha 8 --targets all" "$TOK" "$LAB" "$SEG"

# ---- equivalences, on the all-seven adapter ------------------------------------------
A="--adapter $T/r8_all_rslora --r 8 --alpha 16 --rslora --targets all"
run_grad() { # OUT ARGS...
  local out=$1
  shift
  # shellcheck disable=SC2086
  "$GRAD" "$T/base" $A "$@" >"$out" 2>"$out.err" || echo "owl-lora-grad $*: $(cat "$out.err")" >"$out"
}
run_grad "$T/tape.json" --tokens "$LONG_TOK" --labels "$LONG_LAB" --seg "$LONG_SEG"
run_grad "$T/ckpt.json" --tokens "$LONG_TOK" --labels "$LONG_LAB" --seg "$LONG_SEG" --ckpt
check recomputed_activations_equal_the_tape "$T/ckpt.json" "$T/tape.json" 1e-6
run_grad "$T/micro.json" --tokens "$LONG_TOK" --labels "$LONG_LAB" --seg "$LONG_SEG" --micro 2
check two_micro_batches_add_up_to_the_batch "$T/micro.json" "$T/tape.json" 1e-5
run_grad "$T/packed.json" --tokens "$TOK" --labels "$LAB" --seg "$SEG" --eval
run_grad "$T/unpacked.json" --tokens "$TOK" --labels "$LAB" --seg "$SEG" --micro 3
check packed_equals_unpacked "$T/unpacked.json" "$T/packed.json" 1e-5
python3 - "$T/packed.json" <<'EOF2' >"$T/.ev" && pass eval_loss_equals_the_step_loss || fail eval_loss_equals_the_step_loss "$(cat "$T/.ev")"
import json, sys
r = json.load(open(sys.argv[1]))
print(r["loss_sum"], r["eval_loss_sum"], r["count"], r["eval_count"])
sys.exit(0 if abs(r["loss_sum"] - r["eval_loss_sum"]) <= 1e-6 * abs(r["loss_sum"]) and r["count"] == r["eval_count"] else 1)
EOF2
python3 - "$T/packed.json" <<'EOF2' >"$T/.sv" && pass adapter_view_serves_the_trained_weights || fail adapter_view_serves_the_trained_weights "$(cat "$T/.sv")"
import json, sys
r = json.load(open(sys.argv[1]))
print("trainer", r["eval_loss_sum"], "serving with the adapter view", r["serve_loss_sum"])
sys.exit(0 if abs(r["serve_loss_sum"] - r["eval_loss_sum"]) <= 1e-4 * abs(r["eval_loss_sum"]) else 1)
EOF2
python3 - "$T/tape.json" "$T/ckpt.json" "$T/micro.json" "$T/packed.json" <<'EOF2' >"$T/.fr" && pass base_is_bit_identical_after_the_steps || fail base_is_bit_identical_after_the_steps "$(cat "$T/.fr")"
import json, sys
bad = [f for f in sys.argv[1:] if not json.load(open(f))["frozen"]]
print("weights changed in", bad)
sys.exit(1 if bad else 0)
EOF2

# Ten AdamW steps (the kernel table's adamw_step) from PEFT's adapter give
# PEFT + torch.optim.AdamW's losses, on a safetensors and a GGUF base.
"$PY" "$REF" steps "$T/base" "$T/r8_all_rslora" --tokens "$TOK" --labels "$LAB" --seg "$SEG" --steps 10 --lr 1e-2 --weight-decay 0.01 >"$T/steps.ref.json" 2>"$T/steps.err" || fail ten_adamw_steps "ref_train.py steps: $(tail -3 "$T/steps.err")"
for path in "$T/base" "$T/base/model.gguf"; do
  label=ten_adamw_steps_equal_peft_$([ "$path" = "$T/base" ] && echo safetensors || echo gguf)
  # shellcheck disable=SC2086
  "$GRAD" "$path" $A --tokens "$TOK" --labels "$LAB" --seg "$SEG" --steps 10 --lr 1e-2 --weight-decay 0.01 >"$T/steps.json" 2>"$T/steps.err" || { fail "$label" "$(cat "$T/steps.err")"; continue; }
  "$PY" "$REF" compare-steps "$T/steps.json" "$T/steps.ref.json" --tol 1e-4 >"$T/.st" 2>&1 && pass "$label" || fail "$label" "$(cat "$T/.st")"
done

# Dropout on the adapter input: the same seed gives the same gradients,
# another seed others; the eval loss has none.
run_grad "$T/d1.json" --tokens "$TOK" --labels "$LAB" --seg "$SEG" --dropout 0.3 --dropout-seed 5 --eval
run_grad "$T/d2.json" --tokens "$TOK" --labels "$LAB" --seg "$SEG" --dropout 0.3 --dropout-seed 5
run_grad "$T/d3.json" --tokens "$TOK" --labels "$LAB" --seg "$SEG" --dropout 0.3 --dropout-seed 6
python3 - "$T/d1.json" "$T/d2.json" "$T/d3.json" "$T/packed.json" <<'EOF2' >"$T/.dr" && pass dropout_is_seeded_and_off_in_eval || fail dropout_is_seeded_and_off_in_eval "$(cat "$T/.dr")"
import json, sys
a, b, c, p = (json.load(open(f)) for f in sys.argv[1:])
same = a["grads"] == b["grads"]
other = a["grads"] != c["grads"] and a["loss_sum"] != p["loss_sum"]
ev = abs(a["eval_loss_sum"] - p["loss_sum"]) <= 1e-6 * abs(p["loss_sum"])
print(f"same seed equal: {same}, other seed / no dropout differ: {other}, eval without dropout: {ev}")
sys.exit(0 if same and other and ev else 1)
EOF2

# QLoRA: GGUF bases quantised to Q8_0, Q4_0 and Q4_1, the frozen weights
# read in their blocks; the oracle runs on the same weights dequantised.
for q in Q8_0 Q4_0 Q4_1; do
  "$FX" --out "$T/$q" --seed 21 --preset tiny --std-scale 2 --gguf "$q" >/dev/null
  "$PY" "$REF" grad "$T/base" "$T/r8_all_rslora" --gguf "$T/$q/model.gguf" --tokens "$TOK" --labels "$LAB" --seg "$SEG" >"$T/$q.ref.json" 2>"$T/$q.err" || { fail "grad_qlora_$q" "ref_train.py: $(tail -3 "$T/$q.err")"; continue; }
  "$GRAD" "$T/$q/model.gguf" $A --tokens "$TOK" --labels "$LAB" --seg "$SEG" >"$T/$q.json" 2>"$T/$q.err" || { fail "grad_qlora_$q" "$(cat "$T/$q.err")"; continue; }
  check "grad_qlora_$q" "$T/$q.json" "$T/$q.ref.json"
done

if "$GRAD" "$T/base" $A --tp 2 --tokens "$TOK" --labels "$LAB" >/dev/null 2>"$T/tp.err"; then
  fail training_refuses_tp2 "owl-lora-grad --tp 2 succeeded"
elif grep -q "tp 2" "$T/tp.err"; then
  pass training_refuses_tp2
else
  fail training_refuses_tp2 "$(cat "$T/tp.err")"
fi
