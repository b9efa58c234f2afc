#!/usr/bin/env bash
# Runs every unit test binary ($BUILD/tests/test_*) and every end-to-end script
# (tests/e2e/*.sh). Each prints "PASS name" / "FAIL name: why" lines; this
# script counts them and ends with the line "N passed, N failed".
# Usage: tests/run.sh [FILTER]   (only tests whose file name contains FILTER)
set -u
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${BUILD:-build}
FILTER=${1:-}
export OWL_ROOT="$ROOT"
export OWL_BIN="$ROOT/$BUILD/owl"
export OWL_BUILD="$ROOT/$BUILD"
export OWL_SHARED="${OWL_SHARED:-$ROOT/../shared}"
export PATH="$ROOT/$BUILD:$PATH"
export TMPDIR="${TMPDIR:-/tmp}"
if [ "${SANITIZE:-0}" = 1 ]; then
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  # OpenMP's runtime keeps thread pools alive at exit; those are not owl's leaks.
  export LSAN_OPTIONS="suppressions=$ROOT/tests/lsan.supp:print_suppressions=0"
fi

passed=0
failed=0
failed_names=()
logdir=$(mktemp -d "$TMPDIR/owl-tests-XXXXXX")

run_one() { # name, command...
  local name=$1; shift
  local log="$logdir/$name.log"
  local start=$SECONDS
  "$@" >"$log" 2>&1
  local rc=$?
  local p f
  p=$(grep -c '^PASS ' "$log")
  f=$(grep -c '^FAIL ' "$log")
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
    # crashed or exited non-zero without naming a failure: count it as one
    echo "FAIL $name: exited with status $rc without reporting a failed test" >>"$log"
    f=1
  fi
  passed=$((passed + p))
  failed=$((failed + f))
  printf '%-40s %3d passed %3d failed  (%ds)\n' "$name" "$p" "$f" $((SECONDS - start))
  if [ "$f" -gt 0 ]; then
    failed_names+=("$name")
    grep -v '^PASS ' "$log" | tail -n 40 | sed 's/^/    /'
  fi
}

for bin in "$BUILD"/tests/test_*; do
  [ -x "$bin" ] || continue
  name=$(basename "$bin")
  [[ -z "$FILTER" || "$name" == *"$FILTER"* ]] || continue
  if [ "$name" = test_cuda_ops ] && [ "${SANITIZE:-0}" = 1 ]; then
    # The CUDA driver maps device memory into the range ASan keeps as its
    # shadow gap; without this, cudaMalloc fails under ASan on a GPU machine.
    run_one "$name" env ASAN_OPTIONS="$ASAN_OPTIONS:protect_shadow_gap=0" "$bin"
    continue
  fi
  run_one "$name" "$bin"
done
# The CUDA kernels again on the host emulator of CUDA (tests/cuda-emu,
# $BUILD/libowl_cuda_emu.so): every device test of test_cuda_ops but
# NCCL, so that the kernels' indexing and synchronisation
# are checked on machines without a GPU; shorter shapes (OWL_TEST_QUICK).
if [ -x "$BUILD/tests/test_cuda_ops" ] && [ -f "$BUILD/libowl_cuda_emu.so" ] &&
   [[ -z "$FILTER" || test_cuda_emu == *"$FILTER"* ]]; then
  emu_tests=$("$BUILD/tests/test_cuda_ops" --list | grep -v '^nccl_comm$')
  run_one test_cuda_emu env OWL_CUDA_LIB="$ROOT/$BUILD/libowl_cuda_emu.so" OWL_TEST_QUICK=1 \
    "$BUILD/tests/test_cuda_ops" $emu_tests
fi
# The kernels again on every kernel path this CPU runs (OWL_CPU_PATH, the
# list from test_kernels --cpu-paths, best first), and on the exact f32 path
# that OWL_NO_QGEMM=1 forces for quantised prompts, as a CPU without AVX-512
# runs it. The engine's end-to-end checks run again on the 256-bit integer
# paths below the default (avxvnni, avx2): the avx512 path's kernels are
# theirs and the default's.
cpu_paths=
if [ -x "$BUILD/tests/test_kernels" ]; then
  cpu_paths=$("$BUILD/tests/test_kernels" --cpu-paths)
  for p in $cpu_paths; do
    [[ -z "$FILTER" || test_kernels_$p == *"$FILTER"* ]] || continue
    run_one "test_kernels_$p" env OWL_CPU_PATH="$p" "$BUILD/tests/test_kernels"
  done
  if [[ -z "$FILTER" || test_kernels_no_qgemm == *"$FILTER"* ]]; then
    run_one test_kernels_no_qgemm env OWL_NO_QGEMM=1 OWL_NO_AVX512=1 "$BUILD/tests/test_kernels"
  fi
fi
default_path=$(echo "$cpu_paths" | head -n 1)
# Code that threads share, under ThreadSanitizer (built by the plain `make test`).
if [ "${SANITIZE:-0}" != 1 ]; then
  for bin in build-tsan/tests/test_*; do
    [ -x "$bin" ] || continue
    name=$(basename "$bin")_tsan
    [[ -z "$FILTER" || "$name" == *"$FILTER"* ]] || continue
    run_one "$name" env TSAN_OPTIONS="halt_on_error=1:exitcode=66" "$bin"
  done
fi
for script in tests/e2e/*.sh; do
  [ -f "$script" ] || continue
  name=$(basename "$script" .sh)
  [[ "$name" == lib || "$name" == lib-* ]] && continue  # sourced helpers, not tests
  [[ -z "$FILTER" || "$name" == *"$FILTER"* ]] || continue
  # The whole engine on the host emulator of CUDA runs in the plain run
  # only: under ASan its thousands of host threads take minutes a script,
  # and the kernels' own memory errors are for the op tests to find
  # (test_cuda_emu runs under ASan).
  if [ "${SANITIZE:-0}" = 1 ] && [[ " device train_device serve_device " == *" $name "* ]]; then
    printf '%-40s skipped under the sanitizers (the emulated engine: plain run only)\n' "$name"
    continue
  fi
  run_one "$name" bash "$script"
  if [ "$name" = engine ]; then
    for p in $cpu_paths; do
      [[ "$p" == avxvnni || "$p" == avx2 ]] && [ "$p" != "$default_path" ] || continue
      run_one "engine_$p" env OWL_CPU_PATH="$p" bash "$script"
    done
  fi
done

rm -rf "$logdir"
echo
[ ${#failed_names[@]} -gt 0 ] && echo "failed: ${failed_names[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
