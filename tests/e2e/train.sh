#!/usr/bin/env bash
# owl train end to end on fixture models: a short run registers an adapter
# of its base with its lineage; the loss falls on a small memorisation set
# and greedy generation with the adapter gives back the trained completions;
# the adapter loads in PEFT (tests/oracle/ref_peft.py) with owl's logits, and
# its files have the fields and key names PEFT writes itself; ten steps
# from the same adapter equal PEFT + torch.optim.AdamW's; a run on a GGUF
# base of the same weights writes B in Hugging Face's row order; Ctrl-C stops
# with a checkpoint and --resume takes the uninterrupted run's steps bit for
# bit; accumulating micro-batches equals one bigger batch, and packed equals
# unpacked; owl merge's logits equal the unmerged ones; bad data, a denied
# base and a name against the license's rule each fail clearly and register
# nothing; owl runs list|show and the SVG.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
LOGITS="$OWL_BUILD/owl-logits"
REF="$OWL_ROOT/tests/oracle/ref_peft.py"
PY=$("$OWL_ROOT/scripts/pyenv.sh" 2>"$T/pyenv.err") || { fail peft_available "scripts/pyenv.sh failed: $(tail -3 "$T/pyenv.err")"; PY=; }

# Weights with a wide spread: the logits of the smallest fixture are too flat
# for a loss near 0.
"$FX" --out "$T/base" --seed 7 --std-scale 3 --gguf F32 --gguf-license apache-2.0 --quiet
owl pull "$T/base" --name tiny
expect_rc pull_base 0

# A memorisation set: four questions and their one-word answers.
write_memorisation_set "$T/mem.jsonl"

# ---- a run that registers an adapter ---------------------------------------------------
owl train tiny@1 --data "$T/mem.jsonl" --out tiny-mem --max-steps 40 --lr 1e-2 --batch 4 \
  --grad-accum 1 --seq-len 64 --dropout 0 --warmup 0
expect_rc train_registers 0
expect_contains train_prints_the_run "$OUT" "run "
expect_contains train_prints_the_adapter "$OUT" "registered tiny-mem@1, an adapter of tiny@1"
expect_contains train_inherits_the_license "$OUT" "apache-2.0"
expect_contains train_prints_the_curve "$OUT" "loss.svg"
expect_contains train_step_lines "$ERR" "step 40/40  loss "
expect_contains train_step_line_fields "$ERR" "tok/s  ETA"
RUN=$(sed -n 's/^run \([^:]*\):.*/\1/p' <<<"$OUT")
RUNDIR="$OWL_HOME/runs/$RUN"
[ -f "$RUNDIR/metrics.jsonl" ] && [ "$(grep -c '"loss"' "$RUNDIR/metrics.jsonl")" = 40 ] \
  && pass metrics_one_line_per_step || fail metrics_one_line_per_step "$(ls "$RUNDIR" 2>&1)"

# The loss falls below a threshold on what it memorised.
python3 - "$RUNDIR/metrics.jsonl" >"$T/.loss" <<'EOF'
import json, sys
l = [json.loads(x)["loss"] for x in open(sys.argv[1]) if '"loss"' in x]
print(f"first {l[0]:.3f}, last {l[-1]:.3f}")
sys.exit(0 if l[-1] < 0.1 and l[0] > 1 else 1)
EOF
[ $? = 0 ] && pass loss_falls_below_threshold || fail loss_falls_below_threshold "$(cat "$T/.loss")"

# Greedy generation with the adapter gives back the completions; without, not.
ok=1
for qa in "What is the capital of France?=Paris" "Who wrote Hamlet?=Shakespeare" "How many legs has a cat?=Four"; do
  q=${qa%%=*} a=${qa#*=}
  owl run tiny@1 "$q"$'\n' --adapter tiny-mem@1 --temperature 0 --max-tokens 12
  [ "$OUT" = "$q"$'\n'"$a" ] || { ok=0; fail generation_reproduces_completion "'$q' gave '$OUT', expected '$a' and the end"; }
done
[ $ok = 1 ] && pass generation_reproduces_completion
owl run tiny@1 "Who wrote Hamlet?"$'\n' --temperature 0 --max-tokens 6
expect_not_contains base_alone_does_not_know "$OUT" "Shakespeare"

# Lineage in owl show: base, run, data digest and lines, hyperparameters.
SHA=$(sha256sum "$T/mem.jsonl" | cut -d' ' -f1)
owl show tiny-mem@1
expect_contains show_parent "$OUT" "parent:   tiny@1"
expect_contains show_lineage_run "$OUT" "trained from tiny@1 in run $RUN"
expect_contains show_lineage_data "$OUT" "data sha256:$SHA, 4 lines, 4 samples (prompt)"
expect_contains show_lineage_hyper "$OUT" "rank 16, alpha 32, targets q_proj,k_proj,v_proj,o_proj, lr 0.01, 40 steps"
owl --json show tiny-mem@1
python3 -c '
import json, sys
l = json.loads(sys.argv[1])["config"]["lineage"]
assert l["base"] == "tiny@1" and l["run"] == sys.argv[2] and l["dataset"]["sha256"] == sys.argv[3]
assert l["dataset"]["lines"] == 4 and l["hyperparameters"]["rank"] == 16 and l["steps"] == 40
' "$OUT" "$RUN" "$SHA" 2>"$T/.py" && pass show_json_lineage || fail show_json_lineage "$(cat "$T/.py")"

# ---- PEFT ---------------------------------------------------------------------------------
if [ -n "$PY" ]; then
  TOKENS=1,200,37,400,5,99,300,2,77,150,420,11
  "$PY" "$REF" logits "$T/base" "$RUNDIR/adapter" --tokens $TOKENS --all >"$T/peft.json" 2>"$T/peft.err" \
    && pass peft_loads_the_adapter || fail peft_loads_the_adapter "$(tail -3 "$T/peft.err")"
  "$LOGITS" "$T/base" --adapter "$RUNDIR/adapter" --tokens $TOKENS --all >"$T/owl.json" 2>"$T/owl.err"
  "$LOGITS" "$T/base" --tokens $TOKENS --all >"$T/plain.json"
  python3 - "$T/owl.json" "$T/peft.json" "$T/plain.json" >"$T/.cmp" <<'EOF'
import json, sys
a, b, c = (json.load(open(p)) for p in sys.argv[1:4])
err = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x, y))
moved = max(abs(p - q) for x, y in zip(c, b) for p, q in zip(x, y))
tol = 1e-4 * max(1.0, max(abs(q) for y in b for q in y))
print(f"owl vs PEFT {err:.3g} (tolerance {tol:.3g}); the adapter moves the logits by {moved:.3g}")
sys.exit(0 if err <= tol and moved > 0.05 else 1)
EOF
  [ $? = 0 ] && pass peft_logits_equal_owls || fail peft_logits_equal_owls "$(cat "$T/.cmp")"
  # The same fields and key names as an adapter PEFT saves itself.
  "$PY" "$REF" make "$T/base" "$T/peft-made" --r 16 --alpha 32 --targets q_proj,k_proj,v_proj,o_proj >/dev/null 2>"$T/make.err"
  "$PY" - "$RUNDIR/adapter" "$T/peft-made" >"$T/.cmp" 2>&1 <<'EOF'
import json, sys
from safetensors import safe_open
ours, theirs = sys.argv[1], sys.argv[2]
a = json.load(open(ours + "/adapter_config.json")); b = json.load(open(theirs + "/adapter_config.json"))
if set(a) != set(b):
    print("config fields differ:", set(a) ^ set(b)); sys.exit(1)
for k in ("r", "lora_alpha", "peft_type", "task_type", "bias", "use_rslora", "use_dora", "modules_to_save"):
    if a[k] != b[k]:
        print("config", k, a[k], "vs", b[k]); sys.exit(1)
if sorted(a["target_modules"]) != sorted(b["target_modules"]):
    print("target_modules differ"); sys.exit(1)
def shapes(p):
    with safe_open(p + "/adapter_model.safetensors", "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
sa, sb = shapes(ours), shapes(theirs)
if sa != sb:
    print("keys or shapes differ:", sorted(set(sa) ^ set(sb))[:4]); sys.exit(1)
print(len(sa), "tensors")
EOF
  [ $? = 0 ] && pass peft_fields_and_keys || fail peft_fields_and_keys "$(cat "$T/.cmp")"
fi

# ---- vLLM's checks on a LoRA adapter (tests/oracle/vllm_rules.py: vLLM 0.6.6.post1 and later) ----
# vLLM needs a GPU; its loader's rules, restated, are applied to the files: the config fields it
# requires and refuses, the rank against --max-lora-rank, the key names it parses and the
# model's module names and shapes it looks the matrices up by.
VR="$OWL_ROOT/tests/oracle/vllm_rules.py"
# vllm_ok NAME ADAPTER_DIR BASE_DIR: every release checked accepts the adapter.
vllm_ok() {
  python3 "$VR" "$2" "$3" >"$T/.vllm" 2>&1 && pass "$1" || fail "$1" "$(cat "$T/.vllm")"
}
vllm_ok vllm_accepts_the_adapter "$RUNDIR/adapter" "$T/base"
if [ -n "$PY" ]; then
  # The rules accept what PEFT saves itself, and refuse what vLLM refuses.
  vllm_ok vllm_rules_accept_peft_made "$T/peft-made" "$T/base"
  "$PY" "$REF" make "$T/base" "$T/peft-mts" --r 4 --modules-to-save lm_head >/dev/null 2>"$T/make.err"
  python3 "$VR" "$T/peft-mts" "$T/base" >"$T/.vllm" 2>&1
  [ $? = 1 ] && grep -q "only supports modules_to_save being None" "$T/.vllm" \
    && pass vllm_rules_refuse_modules_to_save || fail vllm_rules_refuse_modules_to_save "$(cat "$T/.vllm" "$T/make.err")"
fi
# rsLoRA: vLLM 0.6 refuses it, later releases scale by alpha / sqrt(r); a rank that is not one
# of vLLM's --max-lora-rank values is served under the next one up. owl says both.
owl train tiny@1 --data "$T/mem.jsonl" --out tiny-rs --rslora --rank 4 --alpha 8 --max-steps 1 --seq-len 64
expect_rc train_rslora 0
expect_contains train_notes_rslora "$ERR" "vLLM 0.6 refuses rsLoRA adapters"
expect_contains train_notes_vllm_rank "$ERR" "a rank-4 adapter is served under the next of them up"
RSRUN=$(sed -n 's/^run \([^:]*\):.*/\1/p' <<<"$OUT")
python3 "$VR" "$OWL_HOME/runs/$RSRUN/adapter" "$T/base" >"$T/.vllm" 2>&1
python3 - "$T/.vllm" <<'EOF' && pass vllm_rslora_by_release || fail vllm_rslora_by_release "$(cat "$T/.vllm")"
import json, math, sys
v = json.load(open(sys.argv[1]))
old, new = v["0.6.6.post1"], v["later"]
sys.exit(0 if not old["ok"] and "vLLM does not yet support RSLoRA." in old["errors"]
         and new["ok"] and abs(new["scaling"] - 8 / math.sqrt(4)) < 1e-12
         and old["max_lora_rank"] == 8 and new["max_lora_rank"] == 8 else 1)
EOF

# ---- ten steps against PEFT + torch.optim.AdamW (tests/oracle/ref_steps.py) -----------------------
# From the same non-zero adapter (PEFT starts B at 0, where A's gradient
# vanishes), warmup then cosine, weight decay, clipping at 1 (the gradient
# norms here are larger), every sample in each step.
if [ -n "$PY" ]; then
  "$PY" "$REF" make "$T/base" "$T/init" --r 8 --alpha 16 --targets q_proj,v_proj --std 0.05 --seed 3 >/dev/null 2>"$T/init.err"
  owl train tiny@1 --out steps --data "$T/mem.jsonl" --init "$T/init" --rank 8 --alpha 16 \
    --targets q_proj,v_proj --dropout 0 --batch 1 --seq-len 128 --grad-accum 1 --max-steps 10 \
    --lr 1e-2 --warmup 2 --weight-decay 0.01
  SRUN=$(sed -n 's/^run \([^:]*\):.*/\1/p' <<<"$OUT")
  "$PY" "$OWL_ROOT/tests/oracle/ref_steps.py" "$T/base" "$T/init" "$T/mem.jsonl" --steps 10 --lr 1e-2 \
    --warmup 2 --weight-decay 0.01 >"$T/ref_steps.json" 2>"$T/ref_steps.err"
  python3 - "$OWL_HOME/runs/$SRUN/metrics.jsonl" "$T/ref_steps.json" >"$T/.cmp" 2>&1 <<'EOF'
import json, sys
ours = [json.loads(l)["loss"] for l in open(sys.argv[1]) if '"loss"' in l]
ref = json.load(open(sys.argv[2]))
err = max(abs(a - b) / max(1.0, abs(b)) for a, b in zip(ours, ref))
print(f"{len(ours)} steps, max relative difference {err:.2g}; owl {ours[-1]:.6f}, PEFT {ref[-1]:.6f}")
sys.exit(0 if len(ours) == len(ref) == 10 and err < 1e-5 and ref[-1] < ref[0] else 1)
EOF
  [ $? = 0 ] && pass ten_steps_equal_peft_adamw || fail ten_steps_equal_peft_adamw "$(cat "$T/.cmp") $(tail -2 "$T/ref_steps.err")"
  owl train tiny@1 --out steps-bad --data "$T/mem.jsonl" --init "$T/init" --rank 16 --max-steps 1
  expect_rc init_of_other_rank_refused 2
fi

# ---- QLoRA-style: a GGUF base; B comes out in Hugging Face's row order --------------------
owl pull "$T/base/model.gguf" --name tiny-gguf
owl train tiny-gguf@1 --data "$T/mem.jsonl" --out tiny-gguf-mem --max-steps 6 --lr 1e-2 --batch 4 \
  --grad-accum 1 --seq-len 64 --targets all
expect_rc train_on_gguf_base 0
GRUN=$(sed -n 's/^run \([^:]*\):.*/\1/p' <<<"$OUT")
vllm_ok vllm_accepts_gguf_trained "$OWL_HOME/runs/$GRUN/adapter" "$T/base"
if [ -n "$PY" ] && [ -n "$GRUN" ]; then
  "$LOGITS" "$T/base/model.gguf" --adapter "$OWL_HOME/runs/$GRUN/adapter" --tokens $TOKENS --all >"$T/g.json" 2>"$T/g.err"
  "$PY" "$REF" logits "$T/base" "$OWL_HOME/runs/$GRUN/adapter" --tokens $TOKENS --all >"$T/gp.json" 2>"$T/gp.err"
  python3 - "$T/g.json" "$T/gp.json" >"$T/.cmp" <<'EOF'
import json, sys
a, b = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
err = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x, y))
tol = 1e-4 * max(1.0, max(abs(q) for y in b for q in y))
print(f"owl on the GGUF vs PEFT on the safetensors base: {err:.3g} (tolerance {tol:.3g})")
sys.exit(0 if err <= tol else 1)
EOF
  [ $? = 0 ] && pass gguf_trained_adapter_in_peft || fail gguf_trained_adapter_in_peft "$(cat "$T/.cmp")"
fi

# QLoRA: a Q8_0 base stays quantised and frozen; the adapter still learns.
"$FX" --out "$T/q8" --seed 7 --std-scale 3 --gguf Q8_0 --gguf-only --gguf-license apache-2.0 --quiet
owl pull "$T/q8/model.gguf" --name tiny-q8
owl train tiny-q8@1 --data "$T/mem.jsonl" --out tiny-q8-mem --max-steps 30 --lr 1e-2 --batch 4 \
  --grad-accum 1 --seq-len 64 --dropout 0 --warmup 0
expect_rc train_on_q8_0_base 0
QRUN=$(sed -n 's/^run \([^:]*\):.*/\1/p' <<<"$OUT")
python3 - "$OWL_HOME/runs/$QRUN/metrics.jsonl" >"$T/.loss" 2>&1 <<'EOF'
import json, sys
l = [json.loads(x)["loss"] for x in open(sys.argv[1]) if '"loss"' in x]
print(f"first {l[0]:.3f}, last {l[-1]:.3f}")
sys.exit(0 if l[-1] < l[0] / 4 else 1)
EOF
[ $? = 0 ] && pass q8_0_loss_falls || fail q8_0_loss_falls "$(cat "$T/.loss")"
owl verify tiny-q8@1
expect_rc q8_0_base_unchanged 0

# ---- Ctrl-C and --resume -------------------------------------------------------------------------
"$FX" --out "$T/mid" --seed 8 --hidden 128 --layers 4 --heads 4 --kv-heads 2 --intermediate 256 --quiet
owl pull "$T/mid" --name mid
python3 - "$T/long.jsonl" <<'EOF'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(48):
        f.write(json.dumps({"messages": [{"role": "user", "content": f"Tell me fact number {i}."},
                                         {"role": "assistant", "content": f"Fact {i}: " + "the quick brown fox jumps over the lazy dog " * (1 + i % 3)}]}) + "\n")
EOF
ARGS=(--data "$T/long.jsonl" --max-steps 30 --batch 2 --grad-accum 2 --seq-len 128 --checkpoint-every 7 --eval-fraction 0.1 --eval-every 10 --threads 2)
owl train mid@1 --out mid-full "${ARGS[@]}"
expect_rc uninterrupted_run 0
FULL=$(sed -n 's/^run \([^:]*\):.*/\1/p' <<<"$OUT")
# Ctrl-C once the run has taken a few steps.
"$OWL_BIN" train mid@1 --out mid-cut "${ARGS[@]}" >"$T/cut.out" 2>"$T/cut.err" &
pid=$!
CUT=
for _ in $(seq 600); do
  CUT=$(sed -n 's/^training run \([^:]*\):.*/\1/p' "$T/cut.err")
  [ -n "$CUT" ] && [ -f "$OWL_HOME/runs/$CUT/metrics.jsonl" ] && [ "$(grep -c '"loss"' "$OWL_HOME/runs/$CUT/metrics.jsonl")" -ge 3 ] && break
  sleep 0.05
done
# While it trains, nobody else may resume it.
owl train --resume "$CUT"
expect_contains run_locked_while_training "$ERR" "is being trained by another owl"
kill -INT $pid
wait $pid
RC=$?
if [ "$RC" = 1 ] && grep -q "stopped at step" "$T/cut.err"; then
  pass ctrl_c_stops_with_checkpoint
  owl list mid-cut
  expect_contains stopped_run_registers_nothing "$OUT" "no models yet"
  [ -f "$OWL_HOME/runs/$CUT/checkpoint/state.json" ] && [ -f "$OWL_HOME/runs/$CUT/checkpoint/adapter_model.safetensors" ] \
    && pass checkpoint_written || fail checkpoint_written "$(ls "$OWL_HOME/runs/$CUT" 2>&1)"
  owl train --resume "$CUT" --threads 2
  expect_rc resume_finishes 0
  expect_contains resume_registers "$OUT" "registered mid-cut@1"
  python3 - "$OWL_HOME/runs/$FULL/metrics.jsonl" "$OWL_HOME/runs/$CUT/metrics.jsonl" >"$T/.cmp" <<'EOF'
import json, sys
def losses(p):
    out = []
    for line in open(p):
        j = json.loads(line)
        out.append((j["step"], repr(j.get("loss")), repr(j.get("eval_loss"))))
    return out
a, b = losses(sys.argv[1]), losses(sys.argv[2])
print(f"{len(a)} and {len(b)} metric lines")
if a != b:
    for x, y in zip(a, b):
        if x != y:
            print("first difference:", x, y); break
    sys.exit(1)
EOF
  [ $? = 0 ] && pass resumed_losses_equal_uninterrupted || fail resumed_losses_equal_uninterrupted "$(cat "$T/.cmp")"
  cmp -s "$OWL_HOME/runs/$FULL/adapter/adapter_model.safetensors" "$OWL_HOME/runs/$CUT/adapter/adapter_model.safetensors" \
    && pass resumed_adapter_equals_uninterrupted || fail resumed_adapter_equals_uninterrupted "the adapters differ"
  owl train --resume "$CUT"
  expect_rc resume_of_finished_run_refused 2
else
  fail ctrl_c_stops_with_checkpoint "exit $RC: $(tail -3 "$T/cut.err")"
fi
grep -q '"eval_loss"' "$OWL_HOME/runs/$FULL/metrics.jsonl" && pass eval_loss_recorded || fail eval_loss_recorded "no eval_loss line"

# Two runs of the same command on 2 threads take the same steps bit for bit,
# on a model whose matrices span several of the kernels' 256-row bands (the
# backward products' sums must not depend on which thread took which band).
"$FX" --out "$T/wide" --seed 9 --hidden 64 --layers 1 --heads 4 --kv-heads 2 --intermediate 1024 \
  --vocab 4096 --quiet
owl pull "$T/wide" --name wide
WARGS=(--data "$T/long.jsonl" --max-steps 3 --batch 2 --seq-len 128 --threads 2 --seed 5 --targets all)
owl train wide@1 --out wide-a "${WARGS[@]}"
WA=$(sed -n 's/^run \([^:]*\):.*/\1/p' <<<"$OUT")
owl train wide@1 --out wide-b "${WARGS[@]}"
WB=$(sed -n 's/^run \([^:]*\):.*/\1/p' <<<"$OUT")
if [ -n "$WA" ] && [ -n "$WB" ] && cmp -s "$OWL_HOME/runs/$WA/adapter/adapter_model.safetensors" \
     "$OWL_HOME/runs/$WB/adapter/adapter_model.safetensors" &&
   [ "$(grep -o '"loss": [^,]*' "$OWL_HOME/runs/$WA/metrics.jsonl")" = "$(grep -o '"loss": [^,]*' "$OWL_HOME/runs/$WB/metrics.jsonl")" ]; then
  pass two_thread_runs_are_bit_identical
else
  fail two_thread_runs_are_bit_identical "runs '$WA' and '$WB' differ: $(grep -o '"loss": [^,]*' "$OWL_HOME/runs/$WA/metrics.jsonl" "$OWL_HOME/runs/$WB/metrics.jsonl" 2>&1 | tr '\n' ' ')"
fi

# The frozen base is bit-identical after all this training.
owl verify tiny@1
expect_rc base_unchanged_after_training 0
owl verify mid@1
expect_rc mid_base_unchanged_after_training 0

# ---- runs list | show ----------------------------------------------------------------------------
owl runs list
expect_contains runs_list_shows_run "$OUT" "$RUN"
expect_contains runs_list_status "$OUT" "registered"
owl runs show "$FULL"
expect_contains runs_show_data "$OUT" "sha256:$(sha256sum "$T/long.jsonl" | cut -d' ' -f1)"
expect_contains runs_show_curve "$OUT" "loss.svg"
python3 -c '
import sys, xml.dom.minidom
d = xml.dom.minidom.parse(sys.argv[1])
lines = d.getElementsByTagName("polyline")
pts = [len(p.getAttribute("points").split()) for p in lines]
assert len(lines) == 2 and pts[0] == 30 and pts[1] == 3, pts
' "$OWL_HOME/runs/$FULL/loss.svg" 2>"$T/.py" && pass svg_has_train_and_eval_curves || fail svg_has_train_and_eval_curves "$(cat "$T/.py")"
owl --json runs show "$FULL"
python3 -c 'import json,sys; j=json.loads(sys.argv[1]); assert j["status"]=="registered" and len(j["train_loss"])==30' "$OUT" \
  && pass runs_show_json || fail runs_show_json "${OUT:0:300}"
owl runs show nosuchrun
expect_rc runs_show_unknown 2

# ---- equivalences: accumulation and packing change nothing but the speed ------------------------
# The samples have 22, 18, 16 and 22 input tokens: each fits a row of 24
# alone and no two do; any two and never three fit a row of 44. So each step
# sees the same two samples in three layouts:
# one micro-batch of 2 rows, 2 micro-batches of 1 row, one row packed with 2.
EQ=(--data "$T/mem.jsonl" --max-steps 6 --lr 1e-2 --dropout 0 --warmup 0 --seed 3)
owl train tiny@1 --out eq-rows "${EQ[@]}" --batch 2 --grad-accum 1 --seq-len 24
R1=$(sed -n 's/^run \([^:]*\):.*/\1/p' <<<"$OUT")
owl train tiny@1 --out eq-accum "${EQ[@]}" --batch 1 --grad-accum 2 --seq-len 24
R2=$(sed -n 's/^run \([^:]*\):.*/\1/p' <<<"$OUT")
owl train tiny@1 --out eq-packed "${EQ[@]}" --batch 1 --grad-accum 1 --seq-len 44
R3=$(sed -n 's/^run \([^:]*\):.*/\1/p' <<<"$OUT")
# Recomputed activations and an eval set on the side change no step either.
owl train tiny@1 --out eq-recompute "${EQ[@]}" --batch 2 --grad-accum 1 --seq-len 24 \
  --checkpoint-activations --eval "$T/mem.jsonl" --eval-every 3
R4=$(sed -n 's/^run \([^:]*\):.*/\1/p' <<<"$OUT")
[ "$(grep -c '"eval_loss"' "$OWL_HOME/runs/$R4/metrics.jsonl" 2>/dev/null)" = 2 ] && pass eval_file_every_3_steps \
  || fail eval_file_every_3_steps "$(cat "$OWL_HOME/runs/$R4/metrics.jsonl" 2>&1 | head -3)"
python3 - "$OWL_HOME/runs/$R1/metrics.jsonl" "$OWL_HOME/runs/$R2/metrics.jsonl" "$OWL_HOME/runs/$R3/metrics.jsonl" "$OWL_HOME/runs/$R4/metrics.jsonl" >"$T/.eq" 2>&1 <<'EOF'
import json, sys
runs = [[json.loads(l) for l in open(p) if '"loss"' in l] for p in sys.argv[1:5]]
names = ["2 rows", "2 micro-batches", "1 packed row", "recomputed activations"]
base = runs[0]
worst = 0
for name, r in zip(names[1:], runs[1:]):
    if len(r) != len(base):
        print(name, "took", len(r), "steps, not", len(base)); sys.exit(1)
    for a, b in zip(base, r):
        if a["tokens"] != b["tokens"] or a["scored"] != b["scored"]:
            print(name, "step", a["step"], "saw other tokens", a["tokens"], b["tokens"]); sys.exit(1)
        d = abs(a["loss"] - b["loss"]) / max(1.0, abs(a["loss"]))
        worst = max(worst, d)
        if d > 1e-4:
            print(name, "step", a["step"], "loss", b["loss"], "vs", a["loss"]); sys.exit(1)
print(f"losses of 6 steps agree within {worst:.2g} (relative)")
EOF
[ $? = 0 ] && pass accumulation_packing_and_recomputation_change_no_step || fail accumulation_packing_and_recomputation_change_no_step "$(cat "$T/.eq")"

# ---- owl merge: a full checkpoint whose logits are the unmerged ones -----------------------------
# compare_logits NAME A.json B.json RTOL: max |a - b| <= RTOL * max(1, max |b|).
compare_logits() {
  python3 - "$2" "$3" "$4" >"$T/.cmp" <<'EOF' && pass "$1" || fail "$1" "$(cat "$T/.cmp")"
import json, sys
a, b, rtol = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), float(sys.argv[3])
err = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x, y))
tol = rtol * max(1.0, max(abs(q) for y in b for q in y))
print(f"max abs error {err:.3g} (tolerance {tol:.3g})")
sys.exit(0 if err <= tol else 1)
EOF
}
TOKENS=1,200,37,400,5,99,300,2,77,150,420,11
owl merge tiny-mem@1 --out tiny-merged
expect_rc merge_registers 0
expect_contains merge_message "$OUT" "registered tiny-merged@1: tiny-mem@1 merged into tiny@1 (8 weights changed), license apache-2.0"
owl show tiny-merged@1
expect_contains merge_show "$OUT" "merged:   tiny-mem@1 into tiny@1"
expect_contains merge_parent "$OUT" "parent:   tiny-mem@1"
owl run tiny-merged@1 "Who wrote Hamlet?"$'\n' --temperature 0 --max-tokens 12
expect_eq merged_model_recalls "$OUT" "Who wrote Hamlet?"$'\n'"Shakespeare"
"$LOGITS" "$OWL_HOME/snapshots/tiny-merged/1" --tokens $TOKENS --all >"$T/merged.json"
"$LOGITS" "$T/base" --adapter "$RUNDIR/adapter" --tokens $TOKENS --all >"$T/unmerged.json"
compare_logits merged_logits_equal_unmerged "$T/merged.json" "$T/unmerged.json" 1e-5
# owl perplexity --adapter scores the text as the merged model does, and not as the base.
for i in 1 2 3 4 5 6; do printf 'Who wrote Hamlet? Shakespeare wrote it, long ago.\n'; done >"$T/ppl.txt"
ppl() { printf '%s' "$OUT" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])' 2>/dev/null; }
owl perplexity tiny-merged@1 --file "$T/ppl.txt" --ctx 16 --json
ppl_merged=$(ppl)
owl perplexity tiny@1 --adapter tiny-mem@1 --file "$T/ppl.txt" --ctx 16 --json
expect_rc perplexity_with_adapter 0
ppl_adapter=$(ppl)
owl perplexity tiny@1 --file "$T/ppl.txt" --ctx 16 --json
ppl_base=$(ppl)
python3 -c "import sys; a, m, b = $ppl_adapter, $ppl_merged, $ppl_base; sys.exit(0 if abs(a - m) <= 1e-4 * m and abs(a - b) > 1e-3 * b else 1)" \
  && pass perplexity_adapter_equals_merged \
  || fail perplexity_adapter_equals_merged "with the adapter $ppl_adapter, merged $ppl_merged, base $ppl_base"
# An f16 base in two shards: the merge keeps the dtype and the shards.
"$FX" --out "$T/h" --seed 11 --std-scale 3 --dtype f16 --shards 2 --quiet
owl pull "$T/h" --name half
owl train half@1 --data "$T/mem.jsonl" --out half-mem --max-steps 8 --lr 1e-2 --batch 4 --grad-accum 1 --seq-len 64 --targets all
HRUN=$(sed -n 's/^run \([^:]*\):.*/\1/p' <<<"$OUT")
vllm_ok vllm_accepts_all_targets "$OWL_HOME/runs/$HRUN/adapter" "$T/h"
owl merge half-mem@1 --out half-merged
expect_rc merge_f16_sharded 0
owl run half-merged@1 "x" --max-tokens 1
M="$OWL_HOME/snapshots/half-merged/1"
[ -f "$M/model.safetensors.index.json" ] && [ -f "$M/model-00002-of-00002.safetensors" ] \
  && pass merge_keeps_shards || fail merge_keeps_shards "$(ls "$M")"
python3 - "$M" <<'EOF' >"$T/.py" 2>&1 && pass merge_keeps_f16 || fail merge_keeps_f16 "$(cat "$T/.py")"
import json, struct, sys, glob
for f in glob.glob(sys.argv[1] + "/*.safetensors"):
    b = open(f, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    bad = [k for k, v in h.items() if k != "__metadata__" and v["dtype"] != "F16"]
    assert not bad, bad
EOF
"$LOGITS" "$M" --tokens $TOKENS --all >"$T/hm.json"
"$LOGITS" "$T/h" --adapter "$OWL_HOME/runs/$HRUN/adapter" --tokens $TOKENS --all >"$T/hu.json"
compare_logits merged_f16_logits_close_to_unmerged "$T/hm.json" "$T/hu.json" 2e-2
owl merge tiny-gguf-mem@1 --out gguf-merged
expect_rc merge_refuses_gguf_base 2
expect_contains merge_refuses_gguf_message "$ERR" "safetensors checkpoint"

# ---- bad data, denied bases, names: clear errors, nothing registered ---------------------------------
printf '{"text": "fine"}\n{"prompt": "p", "completion": 3}\n' >"$T/bad.jsonl"
owl train tiny@1 --data "$T/bad.jsonl" --out bad-a --max-steps 2
expect_rc malformed_line_is_usage_error 2
expect_contains malformed_line_named "$ERR" "bad.jsonl:2: field \"completion\" is not a string"
owl train tiny@1 --data "$T/bad.jsonl" --out bad-skip --max-steps 2 --skip-bad
expect_rc skip_bad_trains 0
expect_contains skip_bad_counts "$ERR" "skipped 1 malformed line"
: >"$T/empty.jsonl"
owl train tiny@1 --data "$T/empty.jsonl" --out bad-b --max-steps 2
expect_rc empty_file_refused 2
expect_contains empty_file_message "$ERR" "holds no samples"
python3 -c 'import json; print(json.dumps({"text": "word " * 400}))' >"$T/long1.jsonl"
owl train tiny@1 --data "$T/long1.jsonl" --out bad-c --max-steps 2 --seq-len 64
expect_rc too_long_refused 2
expect_contains too_long_message "$ERR" "long1.jsonl:1: the sample has"
owl train tiny@1 --data "$T/nosuch.jsonl" --out bad-d
expect_rc missing_file_refused 1
owl train tiny@1 --data "$T/mem.jsonl" --out bad-e --targets q_proj,lm_head
expect_rc unknown_target_refused 2
owl policy add no-finetune --effect deny --action finetune --priority 2000 --message "no fine-tuning here"
owl train tiny@1 --data "$T/mem.jsonl" --out bad-f --max-steps 2
expect_rc denied_base_exit_3 3
expect_contains denied_names_rule "$ERR" "no-finetune"
owl policy rm no-finetune
# Llama 3.1's naming rule: a derivative's name begins with "Llama".
"$FX" --out "$T/llama" --seed 9 --license llama3.1 --quiet
owl pull "$T/llama" --name llama-base
owl train llama-base@1 --data "$T/mem.jsonl" --out support-bot --max-steps 2
expect_rc derived_name_rule_denies 3
expect_contains derived_name_rule_message "$ERR" "Llama"
owl train llama-base@1 --data "$T/mem.jsonl" --out Llama-support-bot --max-steps 2
expect_rc derived_name_rule_allows 0
owl list
for n in bad-a bad-b bad-c bad-d bad-e bad-f support-bot; do
  ! grep -q "^$n@" <<<"$OUT" || fail nothing_registered_on_failure "$n was registered"
done
expect_contains nothing_registered_on_failure "$OUT" "Llama-support-bot@1"

# ---- --json: the result on stdout, no step lines ---------------------------------------------------
owl --json train tiny@1 --data "$T/mem.jsonl" --out js --max-steps 2 --seq-len 64
python3 -c 'import json,sys; j=json.loads(sys.argv[1]); assert j["adapter"]=="js@1" and j["steps"]==2 and j["loss_curve"].endswith("loss.svg")' "$OUT" \
  && pass train_json || fail train_json "${OUT:0:300}"
expect_not_contains train_json_no_step_lines "$ERR" "step 1/2"

# ---- help ---------------------------------------------------------------------------------------------
owl train --help
for d in "[16]" "[2 x rank]" "[0.05]" "[3]" "[2e-4]" "[1]" "[4]" "[512" "[3% of the steps]" "[0]" "[1.0" "[42]" "[100" "[50]" "[q_proj,k_proj,v_proj,o_proj]"; do
  [[ "$OUT" == *"$d"* ]] || fail help_shows_defaults "no default '$d' in owl train --help"
done
pass help_shows_defaults
