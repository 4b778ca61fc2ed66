#!/usr/bin/env bash
# On a GPU node, from the repository root: the issue-13 figures in one prepared run.
# For each precision, the Python peer and then `chex bench` (from a bundle of
# scripts/build-for-gpu-node.sh) at MedGemma-4B shapes on the same card, each a JSON line, all
# appended to OUT_DIR/gpu-bench.jsonl as they finish; between the two precisions, the bundle's
# test programs on the GPU (when it has them).
#
#   scripts/gpu-bench.sh gpu-bundle /tmp/out [path/to/hf_gpu_baseline.py]
#
# The peer needs torch, transformers and peft (the node has them); without its path only our
# figures are taken. BENCH_FIGURES (default rollout,score,grpo-step,sft-step), BENCH_REPEATS
# (default 1; rollouts take ROLLOUT_REPEATS, default 2), BENCH_DTYPES (default "bf16 f32") and
# BENCH_WITHOUT_CHECKPOINTING (default 1; 0 skips the training figures without gradient
# checkpointing) trim the run to the time at hand. The trainers' figures save a checkpoint at
# their last step into TMPDIR (a 4B base is 8.6 GB in bf16): /dev/shm spares the disk's time.
# GPU_TESTS lists the bundle's test programs to run on the GPU (default: all five) and
# TEST_TIMEOUT_S bounds each (default 120). With the score figure, one more scoring run without
# checkpointing is profiled by PyTorch's profiler into OUT_DIR/profile-DTYPE (its line lists the
# longest kernels; score-ops.tsv has them all, score-trace.json.gz the timeline, traffic-census.txt
# the CPU-side arithmetic model of scripts/traffic-census.py to set beside them; with the peer,
# scripts/peer-scoring-profile.py profiles transformers' pass the same way, into
# peer-score-trace.json.gz and peer-traffic-census.txt; BENCH_PROFILE=0 skips both).
#
# Also written to OUT_DIR: gpu-bench.jsonl.stderr (every program's errors), tests.txt (the test
# programs' reports), timeline.jsonl (when each program started and how long it ran) and
# dmon.log (`nvidia-smi dmon`: the card's utilisation and memory every second, so a host-bound
# phase shows as a busy share well under 100%).
set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 BUNDLE_DIR OUT_DIR [HF_GPU_BASELINE_PY]" >&2
  exit 2
fi
bundle=$(cd "$1" && pwd)
mkdir -p "$2"
out_dir=$(cd "$2" && pwd)
out=$out_dir/gpu-bench.jsonl
timeline=$out_dir/timeline.jsonl
peer=${3:-}
: > "$out"
: > "$timeline"
: > "$out_dir/tests.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader |
  sed 's/^/{"card": "/; s/$/"}/' >> "$out"
nvidia-smi dmon -s um -o T > "$out_dir/dmon.log" 2>&1 &
dmon=$!
trap 'kill $dmon 2>/dev/null' EXIT
status=0

# `timed_run LABEL FILE COMMAND…`: the command's stdout appended to FILE, its errors to
# gpu-bench.jsonl.stderr, its span to the timeline.
timed_run() {
  local label=$1 file=$2
  shift 2
  local started
  started=$(date +%s.%N)
  "$@" >> "$file" 2>> "$out.stderr" || status=1
  awk -v what="$label" -v started="$started" -v ended="$(date +%s.%N)" \
    'BEGIN { printf "{\"what\": \"%s\", \"started\": %.2f, \"seconds\": %.2f}\n", what, started, ended - started }' \
    >> "$timeline"
}
bench() {
  timed_run "chex bench $*" "$out" "$bundle/run.sh" bench --preset medgemma-4b \
    --device tch-cuda:0 "$@"
}

IFS=, read -r -a figures <<< "${BENCH_FIGURES:-rollout,score,grpo-step,sft-step}"
training=()
rollout=0
for figure in "${figures[@]}"; do
  if [ "$figure" = rollout ]; then rollout=1; else training+=("$figure"); fi
done
repeats=${BENCH_REPEATS:-1}

# Every training figure in its own process: nvidia-smi sees what the caching allocator holds,
# and in one process a figure would report the blocks an earlier one left cached.
training_figures() {
  local dtype=$1 checkpointing=$2
  for figure in "${training[@]}"; do
    bench --dtype "$dtype" --figures "$figure" --repeats "$repeats" \
      --gradient-checkpointing "$checkpointing"
  done
}

gpu_tests() {
  [ -d "$bundle/tests" ] || return 0
  for program in ${GPU_TESTS:-model_behaviour hf_parity training trl_step backend_contract}; do
    [ -x "$bundle/tests/$program" ] || continue
    CHEX_TEST_DEVICES=tch-cuda:0 timed_run "test $program" "$out_dir/tests.txt" \
      timeout "${TEST_TIMEOUT_S:-120}" "$bundle/run.sh" "tests/$program" --test-threads 1 \
      --show-output
  done
}

# `census DIR NAME REPORT`: the arithmetic model of DIR/NAME-trace.json (scripts/traffic-census.py)
# into DIR/REPORT, beside the kernels' measured times; the trace is then compressed.
census() {
  python3 "$(dirname "$0")/traffic-census.py" "$1/$2-trace.json" > "$1/$3" 2>&1
  gzip -f "$1/$2-trace.json" 2>/dev/null
}

# Each precision's transformers figures first, so a run cut short by the device's time still
# has the peer line beside each of ours; the precision the study uses on GPUs (bf16) first, and
# with checkpointing (its default there) before without.
first=1
for dtype in ${BENCH_DTYPES:-bf16 f32}; do
  if [ -n "$peer" ]; then
    case "$dtype" in
      bf16) timed_run "peer bfloat16" "$out" python3 "$peer" bfloat16 ;;
      f32) timed_run "peer float32" "$out" python3 "$peer" float32 ;;
    esac
  fi
  if [ "$rollout" = 1 ]; then
    # 128 new tokens is the peer's shape; 8 is what a call costs before decoding dominates.
    bench --dtype "$dtype" --figures rollout --repeats "${ROLLOUT_REPEATS:-2}"
    bench --dtype "$dtype" --figures rollout --repeats "${ROLLOUT_REPEATS:-2}" --new-tokens 8
    # Greedy, as evaluation decodes: beside the sampled rollout, what choosing on the device
    # (a sort of the vocabulary for top-p) costs per step.
    bench --dtype "$dtype" --figures rollout --repeats 1 --greedy
    # The same rollout with the fused decode step run eagerly instead of replayed as a CUDA
    # graph (the line's `graph_replays` is 0), then through burn's operations instead of the
    # fused step (`fused_decode` false), so one run measures what each saves.
    CHEX_CUDA_GRAPHS=0 bench --dtype "$dtype" --figures rollout --repeats 1
    CHEX_FUSED_DECODE=0 bench --dtype "$dtype" --figures rollout --repeats 1
  fi
  if [ "${#training[@]}" -gt 0 ]; then
    training_figures "$dtype" true
    # Scoring with checkpointing through burn's operations instead of libtorch's autograd (the
    # line's `fused_training` says which), so one run measures what the fused layers save.
    case ",${BENCH_FIGURES:-score}," in
      *,score,*)
        CHEX_FUSED_TRAINING=0 bench --dtype "$dtype" --figures score --repeats "$repeats" \
          --gradient-checkpointing true ;;
    esac
  fi
  if [ "$first" = 1 ]; then
    gpu_tests
  fi
  if [ "${#training[@]}" -gt 0 ] && [ "${BENCH_WITHOUT_CHECKPOINTING:-1}" = 1 ]; then
    training_figures "$dtype" false
  fi
  case ",${BENCH_FIGURES:-score},:${BENCH_PROFILE:-1}" in
    *,score,*:1)
      bench --dtype "$dtype" --figures score --repeats 1 --gradient-checkpointing false \
        --profile "$out_dir/profile-$dtype"
      census "$out_dir/profile-$dtype" score traffic-census.txt
      # The peer's pass under the same profiler and census: its kernels beside ours.
      if [ -n "$peer" ]; then
        timed_run "peer profile $dtype" "$out" python3 "$(dirname "$0")/peer-scoring-profile.py" \
          "$out_dir/profile-$dtype" --device cuda --dtype "$dtype" --vision-head --repeats 1
        census "$out_dir/profile-$dtype" peer-score peer-traffic-census.txt
      fi ;;
  esac
  first=0
done
cat "$out" "$timeline"
grep -E "^test result|FAILED|panicked|^failures" "$out_dir/tests.txt" 2>/dev/null
exit $status
