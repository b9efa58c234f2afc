#!/usr/bin/env bash
# Every GPU check of owl in one call, for a machine with a CUDA device (an
# H200 when one is lent): the CUDA op tests against the CPU backend
# (test_cuda_ops), the op benchmarks (owl-cuda-bench), the engine's logits and
# a LoRA training step on the device against the CPU's, the op tests again
# under ASan when time is left, and one summary with counts. It keeps to 8
# minutes: each step's limit is what is left of them.
#
#   scripts/gpu-check.sh                  build here (make), then check
#   scripts/gpu-check.sh --prepare DIR    build here and put in DIR what a GPU machine
#                                         without owl's build dependencies needs: the
#                                         programs, libowl_cuda.so, and the shared
#                                         libraries they use beyond the C and C++
#                                         runtimes and CUDA's own (about 45 MiB; no
#                                         ASan build, which would not fit)
#   scripts/gpu-check.sh --prebuilt DIR   check with what --prepare put in DIR (no build)
#
# A lent machine copies the working tree and the ignored paths named in
# `carry`: prepare here into a folder git ignores (listed in .git/info/exclude),
# e.g. `scripts/gpu-check.sh --prepare .gpucheck`, then run
# `scripts/gpu-check.sh --prebuilt .gpucheck` there with .gpucheck carried (or
# plain `scripts/gpu-check.sh` where the machine has owl's build dependencies).
#
# Without a device it runs the checks that need none (the object loads, exports
# its entry points, decodes every weight type as the host does, names the
# missing device), says there is no device and exits 3. A failed build exits 2.
# Nothing here changes the device's settings.
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
JOBS=${JOBS:-$(nproc)}
start=$SECONDS
mode=build
dir=
case "${1:-}" in
  --prepare) mode=prepare; dir=${2:?usage: scripts/gpu-check.sh --prepare DIR} ;;
  --prebuilt) mode=prebuilt; dir=${2:?usage: scripts/gpu-check.sh --prebuilt DIR} ;;
  "") ;;
  *) echo "usage: scripts/gpu-check.sh [--prepare DIR | --prebuilt DIR]" >&2; exit 2 ;;
esac
log=$(mktemp -d "${TMPDIR:-/tmp}/owl-gpu-check-XXXXXX")
summary=()
say() { echo "gpu-check: $*"; }
elapsed() { echo $((SECONDS - start)); }
# seconds left of the 8 minutes, less a margin, and at most $1
left() { local l=$((470 - (SECONDS - start))); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 1 ] && l=1; echo "$l"; }
finish() { # exit status; prints the summary first
  echo "== gpu-check summary ($(elapsed)s, logs in $log) =="
  printf '%s\n' "${summary[@]}"
  [ -f "$log/bench.log" ] && grep '^bench ' "$log/bench.log" | sed 's/^/  /'
  exit "$1"
}

# 1. the programs: built here, or carried
if [ "$mode" = prebuilt ]; then
  OPS=$dir/tests/test_cuda_ops BENCH=$dir/owl-cuda-bench OPS_SAN=
  for f in "$OPS" "$BENCH" "$dir/libowl_cuda.so"; do
    [ -x "$f" ] || [ -f "$f" ] || { summary+=("prebuilt: $f is missing (run --prepare first)"); finish 2; }
  done
  export LD_LIBRARY_PATH="$(cd "$dir" && pwd)/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # CUDA's libraries where the object's rpath does not find them (a pip install)
  if ldd "$dir/libowl_cuda.so" | grep -q 'not found'; then
    for lib in libcublas.so.13 libnccl.so.2; do
      p=$(find /usr/local /usr/lib /opt -name "$lib" 2>/dev/null | head -n 1)
      [ -n "$p" ] && LD_LIBRARY_PATH="$(dirname "$p"):$LD_LIBRARY_PATH"
    done
  fi
  missing=$(ldd "$OPS" "$dir/libowl_cuda.so" 2>&1 | grep 'not found' | sort -u)
  [ -n "$missing" ] && summary+=("prebuilt: libraries not found: $(echo $missing)")
  summary+=("programs: prebuilt in $dir")
else
  say "building with $JOBS jobs (log $log/build.log)"
  targets="$BUILD/libowl_cuda.so $BUILD/tests/test_cuda_ops $BUILD/owl-cuda-bench $BUILD/owl $BUILD/owl-logits $BUILD/owl-fixture $BUILD/owl-lora-grad"
  if ! timeout "$(left 300)" make -j"$JOBS" $targets >"$log/build.log" 2>&1; then
    tail -n 30 "$log/build.log"
    summary+=("build: FAILED (see $log/build.log)")
    finish 2
  fi
  summary+=("build: ok ($(elapsed)s)")
  OPS=$BUILD/tests/test_cuda_ops BENCH=$BUILD/owl-cuda-bench OPS_SAN=build-san/tests/test_cuda_ops
  if [ "$mode" = prepare ]; then
    # (no ASan build: its runtime would not fit beside OpenBLAS in a carry)
    rm -rf "$dir" && mkdir -p "$dir/tests" "$dir/lib"
    cp "$BUILD/libowl_cuda.so" "$BUILD/owl-cuda-bench" "$BUILD/owl" "$BUILD/owl-logits" "$BUILD/owl-fixture" \
      "$BUILD/owl-lora-grad" "$dir/"
    cp "$BUILD/tests/test_cuda_ops" "$dir/tests/"
    # every library they load but the C/C++ runtimes and CUDA's, which the
    # GPU machine's image has
    ldd "$dir/tests/test_cuda_ops" "$dir/owl-cuda-bench" "$dir/libowl_cuda.so" "$dir/owl" "$dir/owl-logits" \
        "$dir/owl-fixture" "$dir/owl-lora-grad" 2>/dev/null | awk '/=> \// {print $1, $3}' | sort -u |
      while read -r name path; do
        case "$name" in
          libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libstdc++*|libgcc_s*) ;;
          libcublas*|libnccl*|libcudart*) ;;
          *) cp -L "$path" "$dir/lib/$name" ;;
        esac
      done
    echo "gpu-check: prepared $dir ($(du -sh "$dir" | cut -f1)): $(ls "$dir/lib" | tr '\n' ' ')"
    echo "gpu-check: on the GPU machine: scripts/gpu-check.sh --prebuilt $dir (carry $dir)"
    exit 0
  fi
fi

# 2. the device, as nvidia-smi sees it
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >"$log/smi.txt" 2>&1; then
  summary+=("device: $(head -n 1 "$log/smi.txt"); $(nvidia-smi --query-gpu=memory.total,driver_version \
    --format=csv,noheader 2>/dev/null | head -n 1)")
else
  summary+=("device: nvidia-smi finds none")
fi

# 3. the op tests, each device test in its own process, so that a fault that
#    spoils one CUDA context does not fail the tests after it
timeout "$(left 60)" "$OPS" --no-device-tests >"$log/ops.log" 2>&1
ops_rc=$?
if grep -q '^no CUDA device' "$log/ops.log" || ! grep -q '^PASS ' "$log/ops.log"; then
  grep -v '^PASS \|^SKIP ' "$log/ops.log" | head -n 20
  summary+=("test_cuda_ops: $(grep -c '^PASS ' "$log/ops.log") passed, $(grep -c '^FAIL ' "$log/ops.log") failed without a device (exit $ops_rc)")
  summary+=("$(grep -m1 '^no CUDA device' "$log/ops.log" || echo "the op tests did not start")")
  summary+=("benchmarks: not run (no device)")
  finish 3
fi
for name in $("$OPS" --list); do
  timeout "$(left 120)" "$OPS" "$name" >"$log/op-$name.log" 2>&1
  rc=$?
  if [ "$rc" -ne 0 ] && ! grep -q '^FAIL ' "$log/op-$name.log"; then
    echo "FAIL $name: exited with status $rc without reporting (a crash or the time limit)" >>"$log/op-$name.log"
  fi
  grep -v '^PASS \|^SKIP ' "$log/op-$name.log" | grep -v '^  ' | head -n 20
  grep '^PASS \|^FAIL ' "$log/op-$name.log" >>"$log/ops.log"
done
pass=$(grep -c '^PASS ' "$log/ops.log")
fail=$(grep -c '^FAIL ' "$log/ops.log")
summary+=("test_cuda_ops: $pass passed, $fail failed ($(elapsed)s)")

# 4. the op benchmarks
timeout "$(left 150)" "$BENCH" >"$log/bench.log" 2>&1
bench_rc=$?
grep -v '^bench ' "$log/bench.log" | head -n 20
summary+=("owl-cuda-bench: $(grep -c '^bench ' "$log/bench.log") figures (exit $bench_rc, $(elapsed)s)")
# 4b. the whole engine on the device: logits against the CPU's for every
#     stored type (as tests/e2e/device.sh does on the emulator), greedy
#     text, sampled text, owl serve's batch against the CPU server's, and
#     owl bench on TinyLlama-1.1B- and Llama-8B-shaped bf16 models
#     (roofline and GEMM fractions, batch 32, the device memory line).
ENG=$(dirname "$OPS")/..
[ "$mode" = prebuilt ] && ENG=$dir
if [ -x "$ENG/owl" ] && [ -x "$ENG/owl-logits" ] && [ -x "$ENG/owl-fixture" ]; then
  fx=$log/fx
  eng_pass=0 eng_fail=0
  cmp_logits() { # NAME TOLERANCE MODEL ARGS...
    local name=$1 tol=$2; shift 2
    if timeout "$(left 60)" "$ENG/owl-logits" "$@" --device cpu >"$log/$name.cpu" 2>>"$log/engine.log" &&
       timeout "$(left 60)" "$ENG/owl-logits" "$@" --device cuda >"$log/$name.cuda" 2>>"$log/engine.log" &&
       python3 - "$log/$name.cpu" "$log/$name.cuda" "$tol" >>"$log/engine.log" 2>&1 <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
fa = [v for r in a for v in r]; fb = [v for r in b for v in r]
d = max(abs(x - y) for x, y in zip(fa, fb)); m = max(abs(x) for x in fa)
print(f"{sys.argv[1]}: max |diff| {d:.3g} of {m:.3g}")
sys.exit(0 if len(fa) == len(fb) and d <= float(sys.argv[3]) * m else 1)
PY
    then eng_pass=$((eng_pass + 1)); else eng_fail=$((eng_fail + 1)); echo "FAIL engine $name" | tee -a "$log/engine.log"; fi
  }
  "$ENG/owl-fixture" --out "$fx/f32" --seed 3 --gguf Q8_0 --quiet &&
    "$ENG/owl-fixture" --out "$fx/f16" --seed 5 --dtype f16 --gguf Q4_0 --quiet &&
    "$ENG/owl-fixture" --out "$fx/bf16" --seed 6 --dtype bf16 --arch qwen2 --quiet
  TOK=1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20
  cmp_logits f32 1e-4 "$fx/f32" --tokens $TOK --all
  cmp_logits f32_decode 1e-4 "$fx/f32" --tokens $TOK --all --stepwise
  cmp_logits q8_0 0.05 "$fx/f32/model.gguf" --tokens $TOK --all
  cmp_logits q8_0_decode 0.05 "$fx/f32/model.gguf" --tokens $TOK --all --stepwise
  cmp_logits f16 0.01 "$fx/f16" --tokens $TOK --all
  cmp_logits q4_0_decode 0.1 "$fx/f16/model.gguf" --tokens $TOK --all --stepwise
  cmp_logits bf16_qwen2 0.02 "$fx/bf16" --tokens $TOK --all --stepwise
  # decoding steps replayed from CUDA graphs against the ops one by one: the same bits
  if timeout "$(left 60)" "$ENG/owl-logits" "$fx/f32/model.gguf" --tokens $TOK --all --stepwise --device cuda >"$log/graphs.on" 2>>"$log/engine.log" &&
     OWL_CUDA_GRAPHS=0 timeout "$(left 60)" "$ENG/owl-logits" "$fx/f32/model.gguf" --tokens $TOK --all --stepwise --device cuda >"$log/graphs.off" 2>>"$log/engine.log" &&
     cmp -s "$log/graphs.on" "$log/graphs.off"; then
    eng_pass=$((eng_pass + 1))
  else
    eng_fail=$((eng_fail + 1)); echo "FAIL engine cuda_graphs_same_logits" | tee -a "$log/engine.log"
  fi
  a=$(timeout "$(left 60)" "$ENG/owl" run "$fx/f32" "hello world" --temperature 0 --max-tokens 16 --device cpu 2>>"$log/engine.log")
  b=$(timeout "$(left 60)" "$ENG/owl" run "$fx/f32" "hello world" --temperature 0 --max-tokens 16 --device cuda 2>>"$log/engine.log")
  if [ -n "$a" ] && [ "$a" = "$b" ]; then eng_pass=$((eng_pass + 1)); else eng_fail=$((eng_fail + 1)); echo "FAIL engine greedy text: '$a' vs '$b'" | tee -a "$log/engine.log"; fi
  # sampled on the device (sample.cu): it answers, the same seed twice the same text
  a=$(timeout "$(left 60)" "$ENG/owl" run "$fx/f32" "hello world" --temperature 0.8 --top-p 0.9 --seed 5 --max-tokens 16 --device cuda 2>>"$log/engine.log")
  b=$(timeout "$(left 60)" "$ENG/owl" run "$fx/f32" "hello world" --temperature 0.8 --top-p 0.9 --seed 5 --max-tokens 16 --device cuda 2>>"$log/engine.log")
  if [ -n "$a" ] && [ "$a" = "$b" ]; then eng_pass=$((eng_pass + 1)); else eng_fail=$((eng_fail + 1)); echo "FAIL engine sampled text on the device: '$a' vs '$b'" | tee -a "$log/engine.log"; fi
  # owl serve --device cuda: four greedy completions decoding in one batch
  # (sampled on the device) against the CPU server's (tests/e2e/serve_device.sh
  # on the emulator)
  serve_texts() { # DEVICE OUT
    local port pid i
    OWL_HOME=$fx/home "$ENG/owl" serve web --port 0 --threads 4 --max-batch 4 --device "$1" >"$fx/$1.port" 2>>"$log/engine.log" &
    pid=$!
    for _ in $(seq 1 300); do port=$(head -n 1 "$fx/$1.port" 2>/dev/null); [ -n "$port" ] && curl -sf -o /dev/null "http://127.0.0.1:$port/health" && break; sleep 0.1; done
    for i in 1 2 3 4; do
      curl -s "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
        --data-binary "{\"model\":\"web\",\"prompt\":\"prompt number $i\",\"max_tokens\":16,\"temperature\":0}" >"$fx/$1.$i" &
    done
    wait $(jobs -p | grep -vx "$pid")
    kill -TERM "$pid"; wait "$pid"
    for i in 1 2 3 4; do python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["choices"][0]["text"])' "$fx/$1.$i" 2>/dev/null; done >"$2"
  }
  if [ "$(left 120)" -ge 60 ] && OWL_HOME=$fx/home "$ENG/owl" pull "$fx/f32" --name tiny --quiet >>"$log/engine.log" 2>&1 &&
     OWL_HOME=$fx/home "$ENG/owl" deploy create web --model tiny@1 --ctx 128 --use internal >>"$log/engine.log" 2>&1; then
    serve_texts cpu "$fx/serve.cpu"
    serve_texts cuda "$fx/serve.cuda"
    if [ "$(grep -c . "$fx/serve.cpu")" -ge 4 ] && cmp -s "$fx/serve.cpu" "$fx/serve.cuda"; then eng_pass=$((eng_pass + 1)); else eng_fail=$((eng_fail + 1)); echo "FAIL serve --device cuda batch greedy vs cpu: $(tr '\n' '|' <"$fx/serve.cuda") vs $(tr '\n' '|' <"$fx/serve.cpu")" | tee -a "$log/engine.log"; fi
  fi
  summary+=("engine on CUDA vs CPU: $eng_pass passed, $eng_fail failed ($(elapsed)s; $log/engine.log)")
  # 4c. LoRA training on the device (as tests/e2e/train_device.sh does on
  #     the emulator): a few `owl train` steps on --device cuda against the
  #     CPU's losses, f32 and Q8_0 bases; then one step's loss and gradients
  #     (owl-lora-grad, from the CPU run's adapter: A and B non-zero) and the
  #     frozen base.
  tr_pass=0 tr_fail=0
  tr_ok() { tr_pass=$((tr_pass + 1)); }
  tr_bad() { tr_fail=$((tr_fail + 1)); echo "FAIL train $1" | tee -a "$log/train.log"; }
  export OWL_HOME=$log/home
  python3 - "$fx/mem.jsonl" <<'PY'
import json, sys
qa = [("What is the capital of France?", "Paris"), ("What colour is the sky?", "Blue"),
      ("How many legs has a cat?", "Four"), ("Who wrote Hamlet?", "Shakespeare")]
with open(sys.argv[1], "w") as f:
    for q, a in qa:
        f.write(json.dumps({"prompt": q + "\n", "completion": a}) + "\n")
PY
  train_pair() { # NAME MODEL ARGS...: CPU and CUDA runs' losses within 1e-4 (relative)
    local name=$1 model=$2; shift 2
    local c g
    c=$(timeout "$(left 60)" "$ENG/owl" train "$model" --data "$fx/mem.jsonl" --out "$name-cpu" "$@" --device cpu 2>>"$log/train.log" | sed -n 's/^run \([^:]*\):.*/\1/p')
    g=$(timeout "$(left 60)" "$ENG/owl" train "$model" --data "$fx/mem.jsonl" --out "$name-cuda" "$@" --device cuda 2>>"$log/train.log" | sed -n 's/^run \([^:]*\):.*/\1/p')
    if [ -n "$c" ] && [ -n "$g" ] && python3 - "$OWL_HOME/runs/$c/metrics.jsonl" "$OWL_HOME/runs/$g/metrics.jsonl" >>"$log/train.log" 2>&1 <<'PY'
import json, sys
a, b = ([json.loads(x)["loss"] for x in open(p) if '"loss"' in x] for p in sys.argv[1:3])
d = max(abs(x - y) / abs(x) for x, y in zip(a, b)) if a and len(a) == len(b) else float("inf")
print(f"train {sys.argv[1]}: {len(a)} steps, max relative loss diff {d:.3g}")
sys.exit(0 if d <= 1e-4 else 1)
PY
    then tr_ok; else tr_bad "$name losses"; fi
    CPU_ADAPTER=$OWL_HOME/runs/$c/adapter
  }
  "$ENG/owl-fixture" --out "$fx/tb" --seed 7 --std-scale 3 --gguf Q8_0 --gguf-license apache-2.0 --quiet &&
    "$ENG/owl" pull "$fx/tb" --name tiny >>"$log/train.log" 2>&1 &&
    "$ENG/owl" pull "$fx/tb/model.gguf" --name tiny-q8 >>"$log/train.log" 2>&1
  TARGS="--max-steps 3 --lr 1e-2 --batch 2 --grad-accum 2 --seq-len 32 --warmup 0 --rank 8 --checkpoint-every 0"
  train_pair q8 tiny-q8@1 $TARGS --dropout 0
  train_pair f32 tiny@1 $TARGS --dropout 0.1 --targets all
  GTOK=1,200,37,400,5,99,300,2,77,150,420,11,8,9,10,11,12,13
  GLAB=200,37,400,5,99,300,2,-1,150,420,11,-1,9,-1,11,12,13,-1
  GSEG=0,0,0,0,0,0,0,0,1,1,1,1,2,2,2,2,2,2
  for model in "$fx/tb" "$fx/tb/model.gguf"; do
    for dev in cpu cuda; do
      timeout "$(left 60)" "$ENG/owl-lora-grad" "$model" --adapter "$CPU_ADAPTER" --r 8 --alpha 16 --targets all \
        --tokens $GTOK --labels $GLAB --seg $GSEG --dropout 0.1 --micro 2 --eval --device $dev \
        >"$log/grad.$dev.json" 2>>"$log/train.log"
    done
    if python3 - "$log/grad.cpu.json" "$log/grad.cuda.json" >>"$log/train.log" 2>&1 <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
m = max(abs(x) for g in a["grads"].values() for x in g)
d = max(abs(x - y) for k in a["grads"] for x, y in zip(a["grads"][k], b["grads"][k]))
l = abs(a["loss_sum"] - b["loss_sum"]) / abs(a["loss_sum"])
s = abs(b["serve_loss_sum"] - b["eval_loss_sum"]) / abs(b["eval_loss_sum"])
print(f"grad: loss rel diff {l:.3g}, grads max |diff| {d:.3g} of {m:.3g}, cuda serve vs eval {s:.3g}, frozen {b['frozen']}")
sys.exit(0 if a["grads"].keys() == b["grads"].keys() and m > 0 and d <= 1e-3 * m and l <= 1e-4
         and s <= 1e-4 and b["frozen"] is True else 1)
PY
    then tr_ok; else tr_bad "grad $model"; fi
  done
  summary+=("LoRA training on CUDA vs CPU: $tr_pass passed, $tr_fail failed ($(elapsed)s; $log/train.log)")
  unset OWL_HOME
  # owl bench: batch-1 decode against the bandwidth roofline, prompt
  # processing against its own GEMMs (cuBLAS) alone, and batch 32.
  bw=${GPU_BANDWIDTH:-4800}
  bench_shape() { # LABEL PRESET PROMPT GEN
    local label=$1 preset=$2 pp=$3 tg=$4 f=$log/owl-bench-$2.log
    "$ENG/owl-fixture" --out "$fx/$preset" --preset "$preset" --dtype bf16 --quiet || return 1
    timeout "$(left 150)" "$ENG/owl" bench "$fx/$preset" --prompt "$pp" --gen "$tg" --reps 2 \
      --device cuda --bandwidth "$bw" --gemm >>"$f" 2>&1
    timeout "$(left 90)" "$ENG/owl" bench "$fx/$preset" --prompt 16 --gen "$tg" --batch 32 --reps 1 \
      --device cuda --bandwidth "$bw" >>"$f" 2>&1
    cat "$f" >>"$log/owl-bench.log"
    summary+=("owl bench --device cuda, $label, bf16: $(grep -E '\| +(pp[0-9]+|tg[0-9]+|tg[0-9]+x32) ' "$f" | awk -F'|' '{print $8 ":" $9}' | sed 's/  */ /g' | tr '\n' ';')")
    while read -r line; do summary+=("  $line"); done < <(grep -E '^(roofline|gemm|cuda graphs|device memory)' "$f")
    rm -rf "$fx/$preset"
  }
  if [ "$(left 120)" -ge 60 ]; then
    bench_shape "TinyLlama-1.1B shape" tinyllama-1.1b 512 128 || summary+=("owl bench TinyLlama: fixture failed")
  else
    summary+=("owl bench --device cuda: skipped for time")
  fi
  # Llama-8B: 16 GB of bf16 to write and load, only when time is left
  if [ "$(left 200)" -ge 200 ]; then
    bench_shape "Llama-8B shape" llama-8b 512 64 || summary+=("owl bench Llama-8B: fixture failed")
  else
    summary+=("owl bench --device cuda, Llama-8B shape: skipped for time ($(elapsed)s used)")
  fi
else
  summary+=("engine on CUDA: not run (owl, owl-logits or owl-fixture missing in $ENG)")
fi

# 5. the op tests under ASan + UBSan, if time is left (built here in build
#    mode; carried in prebuilt mode)
san_fail=0
if [ $((SECONDS - start)) -lt 300 ]; then
  if [ "$mode" = build ] && ! timeout "$(left 150)" make -j"$JOBS" SANITIZE=1 \
      build-san/libowl_cuda.so build-san/tests/test_cuda_ops >"$log/build-san.log" 2>&1; then
    summary+=("test_cuda_ops (ASan): build failed (see $log/build-san.log)")
  elif [ -n "$OPS_SAN" ] && [ -x "$OPS_SAN" ]; then
    ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:protect_shadow_gap=0" \
      LSAN_OPTIONS="suppressions=$(pwd)/tests/lsan.supp:print_suppressions=0" \
      UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
      timeout "$(left 150)" "$OPS_SAN" >"$log/ops-san.log" 2>&1
    san_rc=$?
    [ "$san_rc" -ne 0 ] && san_fail=1
    grep -v '^PASS \|^SKIP ' "$log/ops-san.log" | head -n 30
    summary+=("test_cuda_ops (ASan): $(grep -c '^PASS ' "$log/ops-san.log") passed, $(grep -c '^FAIL ' "$log/ops-san.log") failed (exit $san_rc)")
  else
    summary+=("test_cuda_ops (ASan): not run (prebuilt programs carry no ASan build)")
  fi
else
  summary+=("test_cuda_ops (ASan): skipped for time")
fi

status=0
[ "$fail" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$san_fail" -eq 0 ] && [ "${tr_fail:-0}" -eq 0 ] &&
  [ "${eng_fail:-0}" -eq 0 ] || status=1
finish "$status"
