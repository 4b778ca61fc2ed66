#!/usr/bin/env bash
# On a GPU node, from the repository root: the issue-13 figures in one prepared run.
# For each precision, the Python peer and then `chex bench` (from a bundle of
# scripts/build-for-gpu-node.sh) at MedGemma-4B shapes on the same card, each a JSON line, all
# appended to OUT_DIR/gpu-bench.jsonl as they finish.
#
#   scripts/gpu-bench.sh gpu-bundle /tmp/out [path/to/hf_gpu_baseline.py]
#
# The peer needs torch, transformers and peft (the node has them); without its path only our
# figures are taken. BENCH_FIGURES (default rollout,score,grpo-step,sft-step), BENCH_REPEATS
# (default 1) and BENCH_DTYPES (default "bf16 f32") trim the run to the time at hand.
set -uo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 BUNDLE_DIR OUT_DIR [HF_GPU_BASELINE_PY]" >&2
  exit 2
fi
bundle=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)/gpu-bench.jsonl
peer=${3:-}
: > "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader |
  sed 's/^/{"card": "/; s/$/"}/' >> "$out"
status=0
bench() {
  "$bundle/run.sh" bench --preset medgemma-4b --device tch-cuda:0 --repeats "${BENCH_REPEATS:-1}" \
    "$@" >> "$out" 2>> "$out.stderr" || status=1
}
# The rollout does not train, so it runs once per precision, with 128 new tokens (the peer's
# shape) and with 8 (what a call costs before decoding dominates: issue 13's 7.2 s in f32);
# the training figures run with gradient checkpointing on and off.
IFS=, read -r -a figures <<< "${BENCH_FIGURES:-rollout,score,grpo-step,sft-step}"
training=()
rollout=0
for figure in "${figures[@]}"; do
  if [ "$figure" = rollout ]; then rollout=1; else training+=("$figure"); fi
done
# Each precision's peer figures first, so a run cut short by the device's time still has the
# transformers line beside each of ours.
for dtype in ${BENCH_DTYPES:-bf16 f32}; do
  if [ -n "$peer" ]; then
    case "$dtype" in
      bf16) python3 "$peer" bfloat16 >> "$out" 2>> "$out.stderr" || status=1 ;;
      f32) python3 "$peer" float32 >> "$out" 2>> "$out.stderr" || status=1 ;;
    esac
  fi
  if [ "$rollout" = 1 ]; then
    bench --dtype "$dtype" --figures rollout
    bench --dtype "$dtype" --figures rollout --new-tokens 8
  fi
  if [ "${#training[@]}" -gt 0 ]; then
    for checkpointing in true false; do
      bench --dtype "$dtype" --figures "$(IFS=,; echo "${training[*]}")" \
        --gradient-checkpointing "$checkpointing"
    done
  fi
done
cat "$out"
exit $status
