#!/usr/bin/env bash
# On a GPU node, from the repository root: checks a bundle of scripts/build-for-gpu-node.sh
# (built with WITH_TESTS=1) end to end and packs the figures into one archive.
#
#   scripts/gpu-node-check.sh gpu-bundle /tmp/gpu-check
#
# 1. the card, the node's PyTorch, and `chex device --device tch-cuda:0`;
# 2. the model and trainer tests on tch-cuda:0 (backend contract, parity with transformers,
#    behaviour, step parity with TRL, the trainers);
# 3. the main job's study (configs/tiny-cpu.toml) on tch-cuda:0, pinned to four cores, and the
#    same study on flex on the remaining cores once the synthetic sites exist, for the
#    comparison of macro-F1 and wall time (FLEX_STUDY=0 leaves flex out);
# 4. one SFT checkpoint greedy-decoded on flex and on tch-cuda:0: the same answer.
# Writes OUT_DIR/gpu-check.tgz with the logs, reports, metrics and training logs.
set -uo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 BUNDLE_DIR OUT_DIR" >&2
  exit 2
fi
bundle=$(cd "$1" && pwd)
out=$2
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)
run() { "$bundle/run.sh" "$@"; }
cores=$(nproc)
pin() {
  if command -v taskset >/dev/null && [ "$cores" -ge 8 ]; then taskset -c "$1" "${@:2}"; else "${@:2}"; fi
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  echo "cpu cores: $cores"
} 2>&1 | tee "$out/logs/machine.txt"

status=0
run device --device tch-cuda:0 2>&1 | tee "$out/logs/device.txt" || status=1
for test in backend_contract hf_parity model_behaviour trl_step training; do
  if [ -x "$bundle/tests/$test" ]; then
    echo "== tests/$test on tch-cuda:0"
    CHEX_TEST_DEVICES=tch-cuda:0 run "tests/$test" --nocapture 2>&1 |
      tee "$out/logs/test-$test.txt" | grep -E "^test |test result|max|panicked" || true
    grep -q "test result: ok" "$out/logs/test-$test.txt" || status=1
  fi
done

study() {
  local device=$1 started=$SECONDS rc=0
  # STUDY_ARGS adds `--set` overrides (a quicker study for a dry run of this script).
  # shellcheck disable=SC2086
  timeout "${STUDY_TIMEOUT:-900}" "$bundle/run.sh" run --config configs/tiny-cpu.toml \
    --device "$device" --out "$out/study-$device" ${STUDY_ARGS:-} \
    >"$out/logs/study-$device.txt" 2>&1 || rc=$?
  echo "study on $device: exit $rc, wall $((SECONDS - started)) s" | tee -a "$out/logs/walltimes.txt"
  return $rc
}
export bundle out STUDY_ARGS
export -f study
low=$(( cores >= 8 ? 4 : cores ))
pin "0-$((low - 1))" bash -c 'study tch-cuda:0' &
gpu=$!
# flex starts once the first run has written the synthetic sites, so that it reuses them.
# FLEX_STUDY=0 leaves it out (it needs several minutes of the node's CPU).
flex=
if [ "${FLEX_STUDY:-1}" = 1 ]; then
  for _ in $(seq 1 600); do
    [ -f data/synthetic/synth.json ] && break
    sleep 1
  done
  pin "$low-$((cores - 1))" bash -c 'study cpu' &
  flex=$!
fi
wait "$gpu" || status=1
if [ -n "$flex" ]; then wait "$flex" || status=1; fi
# One SFT checkpoint (flex's when there is one), greedy-decoded on flex and on tch-cuda:0,
# must give one answer.
image=data/synthetic/site-a/CheXpert-v1.0-small/valid/patient00009/study1/view1_frontal.jpg
trained="$out/study-cpu"
[ -d "$trained/checkpoints" ] || trained="$out/study-tch-cuda:0"
if [ -d "$trained/checkpoints" ] && [ -f "$image" ]; then
  for device in cpu tch-cuda:0; do
    # shellcheck disable=SC2086
    run generate --config configs/tiny-cpu.toml --out "$trained" ${STUDY_ARGS:-} --checkpoint sft \
      --device "$device" --image "$image" >"$out/logs/generate-$device.txt" \
      2>"$out/logs/generate-$device.err" || status=1
  done
  if cmp -s "$out/logs/generate-cpu.txt" "$out/logs/generate-tch-cuda:0.txt"; then
    echo "generate: flex and tch-cuda:0 give the same answer from $(basename "$trained")" |
      tee -a "$out/logs/walltimes.txt"
  else
    echo "generate: the answers differ" | tee -a "$out/logs/walltimes.txt"
    status=1
  fi
fi
for device in tch-cuda:0 cpu; do
  echo "== $device"
  grep -E "Macro-F1|macro|paradox|unparseable" "$out/logs/study-$device.txt" | tail -12
done

tar -czf "$out/gpu-check.tgz" -C "$out" logs \
  $(cd "$out" && ls -d study-*/report.md study-*/metrics study-*/timings.json \
    study-*/sft_log.jsonl study-*/grpo_log.jsonl study-*/figures 2>/dev/null)
exit $status
