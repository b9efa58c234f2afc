#!/usr/bin/env bash
# Tensor parallelism across processes on one machine: `mpirun -np 2 owl run
# --tp 2` against `--tp 1` and in-process --tp 2 (greedy and sampled text,
# perplexity, bench), the TCP rendezvous of a launcher without MPI (Slurm's
# variables set by hand), and the refusals: another model or build on one
# rank, a --tp the processes do not divide, serve across processes, a
# missing MPI object.
#
# Under SANITIZE=1 the mpirun parts run with AddressSanitizer's and
# UndefinedBehaviorSanitizer's checks but without LeakSanitizer: OpenMPI
# keeps some 3,000 allocations to exit, most of them made by its components,
# which it unloads at MPI_Finalize, so the reports name "<unknown module>"
# and no suppression in tests/lsan.supp can match them by library. owl's own
# code on that path (engine/dist.c's collectives and comm, the CLI) is the
# code the TCP parts above run, with leak checking on, as test_dist does.
. "$(dirname "$0")/lib.sh"

FX="$OWL_BUILD/owl-fixture"
"$FX" --out "$T/m" --seed 22 --preset tiny --std-scale 2 --kv-heads 2 --heads 4 --quiet
"$FX" --out "$T/other" --seed 23 --preset tiny --std-scale 2 --kv-heads 2 --heads 4 --quiet
GEN=(--temperature 0 --max-tokens 16 --threads 1)
PROMPT="The quick brown fox"
printf 'one line of text to score, and another one after it, with numbers 1 2 3 and more words.\n%.0s' $(seq 1 12) >"$T/text.txt"

owl run "$T/m" "$PROMPT" "${GEN[@]}" --tp 1
TP1=$OUT
owl run "$T/m" "$PROMPT" "${GEN[@]}" --tp 2
TP2=$OUT
[ -n "$TP1" ] && [ "$TP1" == "$TP2" ] && pass inprocess_tp2_equals_tp1 || fail inprocess_tp2_equals_tp1 "tp1 '$TP1' tp2 '$TP2'"

# ---- the TCP rendezvous: two processes as srun without --mpi starts them ----

# slurm_pair NAME OWL1 MODEL1 ARGS...: rank 0 runs owl with MODEL; rank 1
# runs OWL1 (an owl executable) with MODEL1 (given as the same argument
# through another home's registry when it differs).
rendezvous_pair() { # out-prefix rank1-env rank0-args... -- (the same args for both)
  local pre=$1 env1=$2; shift 2
  local port; port=$(free_port)
  env SLURM_PROCID=1 SLURM_NTASKS=2 SLURM_LOCALID=1 OWL_DIST_TIMEOUT=20 $env1 \
    "${OWL1:-$OWL_BIN}" "$@" --rendezvous "127.0.0.1:$port" >"$T/$pre.1.out" 2>"$T/$pre.1.err" &
  local kid=$!
  env SLURM_PROCID=0 SLURM_NTASKS=2 SLURM_LOCALID=0 OWL_DIST_TIMEOUT=20 \
    "$OWL_BIN" "$@" --rendezvous "127.0.0.1:$port" >"$T/$pre.0.out" 2>"$T/$pre.0.err"
  RC0=$?
  wait $kid
  RC1=$?
  OUT0=$(cat "$T/$pre.0.out")
  ERRS=$(cat "$T/$pre.0.err" "$T/$pre.1.err")
}

rendezvous_pair tcp "" run "$T/m" "$PROMPT" "${GEN[@]}" --tp 2
[ $RC0 -eq 0 ] && [ $RC1 -eq 0 ] && [ "$OUT0" == "$TP1" ] && pass tcp_tp2_two_processes_equals_tp1 \
  || fail tcp_tp2_two_processes_equals_tp1 "rc $RC0/$RC1, '$OUT0' vs '$TP1': $ERRS"
[ ! -s "$T/tcp.1.out" ] && [ ! -s "$T/tcp.1.err" ] && pass tcp_rank1_silent || fail tcp_rank1_silent "$(cat "$T/tcp.1.out" "$T/tcp.1.err")"

rendezvous_pair tcp4 "" run "$T/m" "$PROMPT" "${GEN[@]}" --tp 4
[ $RC0 -eq 0 ] && [ "$OUT0" == "$TP1" ] && pass tcp_tp4_two_ranks_per_process_equals_tp1 \
  || fail tcp_tp4_two_ranks_per_process_equals_tp1 "rc $RC0/$RC1, '$OUT0': $ERRS"

# Sampled, with the clock's seed: rank 0's seed and each of its sampled
# tokens on both processes, and the check of the generated text agrees.
rendezvous_pair tcps "" run "$T/m" "$PROMPT" --temperature 1.2 --max-tokens 16 --threads 1 --tp 2
[ $RC0 -eq 0 ] && [ $RC1 -eq 0 ] && pass tcp_sampling_seed_from_rank0 || fail tcp_sampling_seed_from_rank0 "rc $RC0/$RC1: $ERRS"

# Another model under the same name: rank 1's home registers other weights.
mkdir -p "$T/h0" "$T/h1"
OWL_HOME="$T/h0" "$OWL_BIN" pull "$T/m" --name fx --quiet >/dev/null 2>&1
OWL_HOME="$T/h1" "$OWL_BIN" pull "$T/other" --name fx --quiet >/dev/null 2>&1
OWL_HOME="$T/h0" rendezvous_pair digest "OWL_HOME=$T/h1" run fx "$PROMPT" "${GEN[@]}" --tp 2
[ $RC0 -eq 4 ] && [ $RC1 -eq 4 ] && [[ "$ERRS" == *"rank 1 has another model digest than rank 0"* ]] \
  && pass tcp_other_model_refused || fail tcp_other_model_refused "rc $RC0/$RC1: $ERRS"
[[ "$OUT0" != *"$PROMPT"* ]] && pass tcp_other_model_refused_before_work || fail tcp_other_model_refused_before_work "$OUT0"

# Another owl build on rank 1 (the same program, one byte more).
mkdir -p "$T/bin2" && cp "$OWL_BIN" "$T/bin2/owl" && printf 'x' >>"$T/bin2/owl"
OWL1="$T/bin2/owl" rendezvous_pair build "" run "$T/m" "$PROMPT" "${GEN[@]}" --tp 2
[ $RC0 -eq 4 ] && [[ "$ERRS" == *"rank 1 has another owl build than rank 0"* ]] \
  && pass tcp_other_build_refused || fail tcp_other_build_refused "rc $RC0/$RC1: $ERRS"

rendezvous_pair ppl "" perplexity "$T/m" --file "$T/text.txt" --ctx 32 --threads 1 --tp 2 --json
PPL_TCP=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ppl"])' "$T/ppl.0.out" 2>/dev/null)
owl perplexity "$T/m" --file "$T/text.txt" --ctx 32 --threads 1 --tp 2 --json
PPL_TP2=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ppl"])' "$OUT" 2>/dev/null)
owl perplexity "$T/m" --file "$T/text.txt" --ctx 32 --threads 1 --tp 1 --json
PPL_TP1=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ppl"])' "$OUT" 2>/dev/null)
[ -n "$PPL_TCP" ] && [ "$PPL_TCP" == "$PPL_TP2" ] && pass tcp_perplexity_equals_inprocess_tp2 \
  || fail tcp_perplexity_equals_inprocess_tp2 "'$PPL_TCP' vs '$PPL_TP2': $ERRS"
python3 -c 'import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(abs(a-b)>1e-4*b)' "$PPL_TCP" "$PPL_TP1" 2>/dev/null \
  && pass tcp_perplexity_close_to_tp1 || fail tcp_perplexity_close_to_tp1 "'$PPL_TCP' vs '$PPL_TP1'"

# A LoRA adapter across processes: each process applies its own ranks' bands
# of A and B (offsets of the global ranks). Made by peft (tests/oracle/ref_peft.py).
PY=$("$OWL_ROOT/scripts/pyenv.sh" 2>/dev/null) || PY=
ADAPTER=
if [ -n "$PY" ] && "$PY" "$OWL_ROOT/tests/oracle/ref_peft.py" make "$T/m" "$T/ad" --r 8 --std 0.3 >/dev/null 2>"$T/ad.err"; then
  ADAPTER="$T/ad"
  owl run "$T/m" "$PROMPT" "${GEN[@]}" --tp 1 --adapter "$ADAPTER"
  AD1=$OUT
  [ "$AD1" != "$TP1" ] && pass adapter_changes_the_text || fail adapter_changes_the_text "'$AD1'"
  rendezvous_pair tcpad "" run "$T/m" "$PROMPT" "${GEN[@]}" --tp 4 --adapter "$ADAPTER"
  [ $RC0 -eq 0 ] && [ "$OUT0" == "$AD1" ] && pass tcp_adapter_tp4_equals_tp1 \
    || fail tcp_adapter_tp4_equals_tp1 "rc $RC0/$RC1, '$OUT0' vs '$AD1': $ERRS"
else
  echo "SKIP adapter across processes: scripts/pyenv.sh or peft is not available"
fi

# ---- refusals that need no MPI ---------------------------------------------------
SLURM_PROCID=0 SLURM_NTASKS=2 owl run "$T/m" "$PROMPT" "${GEN[@]}" --tp 2
[ "$RC" -eq 2 ] && [[ "$ERR" == *"without MPI: give --rendezvous HOST:PORT"* ]] && pass slurm_without_rendezvous_refused \
  || fail slurm_without_rendezvous_refused "rc $RC: $ERR"
SLURM_PROCID=0 SLURM_NTASKS=2 owl serve anything
[ "$RC" -eq 2 ] && [[ "$ERR" == *"owl serve does not run across processes yet"* ]] && pass serve_across_processes_refused \
  || fail serve_across_processes_refused "rc $RC: $ERR"
SLURM_PROCID=0 SLURM_NTASKS=2 owl chat "$T/m"
[ "$RC" -eq 2 ] && [[ "$ERR" == *"owl chat"*"one process"* ]] && pass chat_across_processes_refused \
  || fail chat_across_processes_refused "rc $RC: $ERR"
owl run "$T/m" "$PROMPT" "${GEN[@]}" --rendezvous 127.0.0.1:1
[ "$RC" -eq 2 ] && [[ "$ERR" == *"no launcher"* ]] && pass rendezvous_without_launcher_refused \
  || fail rendezvous_without_launcher_refused "rc $RC: $ERR"
# An MPI launch where the MPI object is not beside owl nor on the library path.
mkdir -p "$T/bin3" && cp "$OWL_BIN" "$T/bin3/owl"
OMPI_COMM_WORLD_RANK=0 OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_LOCAL_RANK=0 "$T/bin3/owl" run "$T/m" "$PROMPT" "${GEN[@]}" --tp 2 >"$T/nompi.out" 2>"$T/nompi.err"
RC=$?
[ "$RC" -ne 0 ] && grep -q "libowl_mpi.so cannot be loaded" "$T/nompi.err" && pass missing_mpi_object_refused \
  || fail missing_mpi_object_refused "rc $RC: $(cat "$T/nompi.err")"

# ---- MPI ---------------------------------------------------------------------------
if ! command -v mpirun >/dev/null 2>&1; then
  echo "SKIP mpi: mpirun is not installed (apt-get install openmpi-bin libopenmpi-dev)"
  exit 0
fi
if [ ! -f "$OWL_BUILD/libowl_mpi.so" ]; then
  echo "SKIP mpi: $OWL_BUILD/libowl_mpi.so was not built (OpenMPI's libopenmpi-dev is missing)"
  exit 0
fi
if [ "${SANITIZE:-0}" = 1 ]; then
  export ASAN_OPTIONS="${ASAN_OPTIONS:-}:detect_leaks=0"
fi
[ "$(id -u)" -eq 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# One machine with few cores: more processes than cores, and no binding
# that would pin both to one core's threads.
MPIRUN=(mpirun --oversubscribe --bind-to none -np 2)

mpi() { # out-prefix args...
  local pre=$1; shift
  timeout 120 "$@" >"$T/$pre.out" 2>"$T/$pre.err"
  RC=$?
  OUT=$(cat "$T/$pre.out")
  ERR=$(cat "$T/$pre.err")
}

mpi m2 "${MPIRUN[@]}" "$OWL_BIN" run "$T/m" "$PROMPT" "${GEN[@]}" --tp 2
[ "$RC" -eq 0 ] && [ "$OUT" == "$TP1" ] && pass mpirun_tp2_equals_tp1 || fail mpirun_tp2_equals_tp1 "rc $RC, '$OUT' vs '$TP1': $ERR"
[ "$OUT" == "$TP2" ] && pass mpirun_tp2_equals_inprocess_tp2 || fail mpirun_tp2_equals_inprocess_tp2 "'$OUT' vs '$TP2'"
[ -z "$ERR" ] && pass mpirun_quiet || fail mpirun_quiet "$ERR"

mpi m4 "${MPIRUN[@]}" "$OWL_BIN" run "$T/m" "$PROMPT" "${GEN[@]}" --tp 4
[ "$RC" -eq 0 ] && [ "$OUT" == "$TP1" ] && pass mpirun_tp4_equals_tp1 || fail mpirun_tp4_equals_tp1 "rc $RC, '$OUT': $ERR"

mpi ms "${MPIRUN[@]}" "$OWL_BIN" run "$T/m" "$PROMPT" --temperature 0.9 --max-tokens 16 --threads 1 --tp 2 --seed 7
owl run "$T/m" "$PROMPT" --temperature 0.9 --max-tokens 16 --threads 1 --tp 2 --seed 7
[ "$RC" -eq 0 ] && [ "$(cat "$T/ms.out")" == "$OUT" ] && pass mpirun_sampled_equals_inprocess \
  || fail mpirun_sampled_equals_inprocess "'$(cat "$T/ms.out")' vs '$OUT': $(cat "$T/ms.err")"
mpi mseed "${MPIRUN[@]}" "$OWL_BIN" run "$T/m" "$PROMPT" --temperature 1.2 --max-tokens 16 --threads 1 --tp 2
[ "$RC" -eq 0 ] && pass mpirun_sampling_seed_from_rank0 || fail mpirun_sampling_seed_from_rank0 "rc $RC: $ERR"

printf '%s\n' "$PROMPT" '{"prompt": "Hello there", "max_tokens": 8}' >"$T/prompts.txt"
mpi mp "${MPIRUN[@]}" "$OWL_BIN" run "$T/m" --prompts "$T/prompts.txt" "${GEN[@]}" --tp 2
owl run "$T/m" --prompts "$T/prompts.txt" "${GEN[@]}" --tp 1
[ "$(cat "$T/mp.out")" == "$OUT" ] && [ -n "$OUT" ] && pass mpirun_prompts_equal_tp1 || fail mpirun_prompts_equal_tp1 "$(cat "$T/mp.out" "$T/mp.err")"

mpi mppl "${MPIRUN[@]}" "$OWL_BIN" perplexity "$T/m" --file "$T/text.txt" --ctx 32 --threads 1 --tp 2 --json
PPL_MPI=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["ppl"])' "$OUT" 2>/dev/null)
[ -n "$PPL_MPI" ] && [ "$PPL_MPI" == "$PPL_TP2" ] && pass mpirun_perplexity_equals_inprocess_tp2 \
  || fail mpirun_perplexity_equals_inprocess_tp2 "'$PPL_MPI' vs '$PPL_TP2': $ERR"
python3 -c 'import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); sys.exit(abs(a-b)>1e-4*b)' "$PPL_MPI" "$PPL_TP1" 2>/dev/null \
  && pass mpirun_perplexity_close_to_tp1 || fail mpirun_perplexity_close_to_tp1 "'$PPL_MPI' vs '$PPL_TP1'"

mpi mb "${MPIRUN[@]}" "$OWL_BIN" bench "$T/m" --tp 2 --threads 1 --prompt 16 --gen 4 --reps 1 --json
python3 - "$OUT" <<'EOF' && pass mpirun_bench || fail mpirun_bench "rc $RC: $OUT $ERR"
import json, sys
b = json.loads(sys.argv[1])  # one object: only rank 0 wrote
assert b["processes"] == 2 and b["tp"] == 2 and b["backend"] == "cpu mpi", b
assert b["pp_tokens_per_s"] > 0 and b["tg_tokens_per_s"] > 0, b
EOF

if [ -n "$ADAPTER" ]; then
  mpi mad "${MPIRUN[@]}" "$OWL_BIN" run "$T/m" "$PROMPT" "${GEN[@]}" --tp 2 --adapter "$ADAPTER"
  [ "$RC" -eq 0 ] && [ "$OUT" == "$AD1" ] && pass mpirun_adapter_tp2_equals_tp1 || fail mpirun_adapter_tp2_equals_tp1 "rc $RC: '$OUT' vs '$AD1': $ERR"
fi

# The TCP rendezvous under mpirun (rank and size from OpenMPI, no MPI traffic).
mpi mt "${MPIRUN[@]}" "$OWL_BIN" run "$T/m" "$PROMPT" "${GEN[@]}" --tp 2 --rendezvous "127.0.0.1:$(free_port)"
[ "$RC" -eq 0 ] && [ "$OUT" == "$TP1" ] && pass mpirun_with_rendezvous_equals_tp1 || fail mpirun_with_rendezvous_equals_tp1 "rc $RC: $OUT $ERR"

mpi mtp "${MPIRUN[@]}" "$OWL_BIN" run "$T/m" "$PROMPT" "${GEN[@]}" --tp 1
[ "$RC" -ne 0 ] && [[ "$ERR" == *"cannot be spread evenly over 2 processes"* ]] && pass mpirun_tp_not_multiple_refused \
  || fail mpirun_tp_not_multiple_refused "rc $RC: $ERR"

# Rank 1 with another model: the same command in another home (MPMD only to set its home).
mpi mdig mpirun --oversubscribe --bind-to none -np 1 -x OWL_HOME="$T/h0" "$OWL_BIN" run fx "$PROMPT" "${GEN[@]}" --tp 2 \
  : -np 1 -x OWL_HOME="$T/h1" "$OWL_BIN" run fx "$PROMPT" "${GEN[@]}" --tp 2
[ "$RC" -ne 0 ] && [[ "$ERR" == *"rank 1 has another model digest than rank 0"* ]] && pass mpirun_other_model_refused \
  || fail mpirun_other_model_refused "rc $RC: $ERR"
[[ "$OUT" != *"$PROMPT"* ]] && pass mpirun_other_model_refused_before_work || fail mpirun_other_model_refused_before_work "$OUT"

# A rank that fails alone (its model is missing) ends the job instead of leaving rank 0 waiting.
mpi mmiss mpirun --oversubscribe --bind-to none -np 1 -x OWL_HOME="$T/h0" "$OWL_BIN" run fx "$PROMPT" "${GEN[@]}" --tp 2 \
  : -np 1 -x OWL_HOME="$T/empty" "$OWL_BIN" run fx "$PROMPT" "${GEN[@]}" --tp 2
[ "$RC" -ne 0 ] && [ "$RC" -ne 124 ] && [[ "$ERR" == *"rank 1 of 2"* ]] && pass mpirun_failing_rank_ends_job \
  || fail mpirun_failing_rank_ends_job "rc $RC: $ERR"
