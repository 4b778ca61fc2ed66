#!/usr/bin/env bash
# On a GPU node, from the repository root: the issue-13 figures in one prepared run.
# `chex bench` (from a bundle of scripts/build-for-gpu-node.sh) at MedGemma-4B shapes, then the
# Python peer on the same card, each a JSON line, all into OUT_DIR/gpu-bench.jsonl.
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
for dtype in ${BENCH_DTYPES:-bf16 f32}; do
  for checkpointing in true false; do
    "$bundle/run.sh" bench --preset medgemma-4b --device tch-cuda:0 --dtype "$dtype" \
      --figures "${BENCH_FIGURES:-rollout,score,grpo-step,sft-step}" --repeats "${BENCH_REPEATS:-1}" \
      --gradient-checkpointing "$checkpointing" >> "$out" 2>> "$out.stderr" || status=1
  done
done
if [ -n "$peer" ]; then
  python3 "$peer" bfloat16 float32 >> "$out" 2>> "$out.stderr" || status=1
fi
cat "$out"
exit $status
