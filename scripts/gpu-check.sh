#!/usr/bin/env bash
# Every GPU check of owl in one call, for a machine with a CUDA device (an
# H200 when one is lent): builds, runs the CUDA op tests against the CPU
# backend (build/tests/test_cuda_ops, also under ASan when there is time),
# the op benchmarks (build/owl-cuda-bench), and prints one summary with
# counts. Meant to finish in under 8 minutes; each step has its own limit.
#
# On a machine without a device it builds, runs the checks that need none
# (the object loads, exports its entry points, names the missing device),
# says there is no device and exits 3. Nothing here changes the device's
# settings.
#
# Usage: scripts/gpu-check.sh            (from anywhere; works in the repository)
#        JOBS=16 scripts/gpu-check.sh    (parallel build jobs; default: the cores)
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
JOBS=${JOBS:-$(nproc)}
start=$SECONDS
log=$(mktemp -d "${TMPDIR:-/tmp}/owl-gpu-check-XXXXXX")
summary=()
say() { echo "gpu-check: $*"; }
elapsed() { echo $((SECONDS - start)); }
# seconds left of the 8 minutes, less a margin, and at most $1
left() { local l=$((470 - (SECONDS - start))); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 1 ] && l=1; echo "$l"; }

# 1. the build: the CUDA object, the op tests, the benchmark tool
say "building with $JOBS jobs (log $log/build.log)"
if ! timeout 240 make -j"$JOBS" "$BUILD/libowl_cuda.so" "$BUILD/tests/test_cuda_ops" \
	"$BUILD/owl-cuda-bench" "$BUILD/owl" >"$log/build.log" 2>&1; then
  tail -n 30 "$log/build.log"
  echo "== gpu-check summary ($(elapsed)s) =="
  echo "build: FAILED (see $log/build.log)"
  exit 2
fi
summary+=("build: ok ($(elapsed)s): $BUILD/libowl_cuda.so, test_cuda_ops, owl-cuda-bench")

# 2. the device, as nvidia-smi and the CUDA object see it
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >"$log/smi.txt" 2>&1; then
  summary+=("device: $(head -n 1 "$log/smi.txt")")
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    >>"$log/smi.txt" 2>/dev/null || true
else
  summary+=("device: nvidia-smi finds none")
fi

# 3. the op tests (they print PASS / FAIL / SKIP lines)
timeout "$(left 240)" "$BUILD/tests/test_cuda_ops" >"$log/ops.log" 2>&1
ops_rc=$?
pass=$(grep -c '^PASS ' "$log/ops.log")
fail=$(grep -c '^FAIL ' "$log/ops.log")
skip=$(grep -c '^SKIP ' "$log/ops.log")
grep -v '^PASS \|^SKIP \|^no CUDA device' "$log/ops.log" | head -n 60
summary+=("test_cuda_ops: $pass passed, $fail failed, $skip skipped (exit $ops_rc, $(elapsed)s)")
if [ "$skip" -gt 0 ] && [ "$pass" -le 3 ]; then
  # only the checks that need no device ran
  echo "== gpu-check summary ($(elapsed)s) =="
  printf '%s\n' "${summary[@]}"
  echo "no CUDA device: $(grep -m1 '^no CUDA device' "$log/ops.log" | sed 's/^no CUDA device: //')"
  echo "benchmarks: not run (no device)"
  exit 3
fi

# 4. the op benchmarks
timeout "$(left 150)" "$BUILD/owl-cuda-bench" >"$log/bench.log" 2>&1
bench_rc=$?
cat "$log/bench.log"
summary+=("owl-cuda-bench: $(grep -c '^bench ' "$log/bench.log") figures (exit $bench_rc, $(elapsed)s)")
# The engine's own forward pass runs on the CPU backend only: owl bench has
# no CUDA path to measure yet, and says so here rather than timing the CPU.
summary+=("owl bench on CUDA: not run: the engine has no CUDA forward pass yet (engine/forward.c drives the CPU backend)")

# 5. the op tests again under ASan + UBSan, if the time allows (the object
#    is loaded into an instrumented process; see tests/run.sh for the options)
san_fail=0
if [ $((SECONDS - start)) -lt 240 ]; then
  if timeout "$(left 150)" make -j"$JOBS" SANITIZE=1 build-san/libowl_cuda.so build-san/tests/test_cuda_ops \
	>"$log/build-san.log" 2>&1; then
    ASAN_OPTIONS="detect_leaks=1:halt_on_error=1:protect_shadow_gap=0" \
      LSAN_OPTIONS="suppressions=$(pwd)/tests/lsan.supp:print_suppressions=0" \
      UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
      timeout "$(left 120)" build-san/tests/test_cuda_ops >"$log/ops-san.log" 2>&1
    san_rc=$?
    [ "$san_rc" -ne 0 ] && san_fail=1
    grep -v '^PASS \|^SKIP ' "$log/ops-san.log" | head -n 30
    summary+=("test_cuda_ops (ASan): $(grep -c '^PASS ' "$log/ops-san.log") passed, $(grep -c '^FAIL ' "$log/ops-san.log") failed (exit $san_rc)")
  else
    summary+=("test_cuda_ops (ASan): build failed (see $log/build-san.log)")
  fi
else
  summary+=("test_cuda_ops (ASan): skipped for time")
fi

echo "== gpu-check summary ($(elapsed)s, logs in $log) =="
printf '%s\n' "${summary[@]}"
grep '^bench ' "$log/bench.log" | sed 's/^/  /'
[ "$fail" -eq 0 ] && [ "$ops_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$san_fail" -eq 0 ]
