#!/usr/bin/env bash
# Counts the libtorch operations one decode step of `chex bench`'s rollout calls, by name. On a
# GPU each of them is a kernel launch the host must issue, so at MedGemma-4B's 34 layers and
# batch 32 this count, not arithmetic, bounds the decode step (issue 13). Counting needs no GPU:
# the same calls are made on tch-cpu.
#
#   scripts/count-launches.sh [CHEX_BINARY] [DTYPE]     (defaults: target/release/chex, bf16)
#
# Needs `perf` with uprobes (root) and a chex built with `--features tch`; libtorch is found
# through scripts/with-libtorch.sh. Every `atg_*`/`at_*` entry point of torch-sys in the binary
# gets a uprobe; two rollouts (1 and 11 new tokens) are counted and their difference divided by
# the 10 extra steps and the two calls `chex bench --repeats 1` makes (warm-up and timed run).
# View-only calls (reshape, slice, narrow, transpose, view, broadcast) launch nothing and are
# listed but left out of the total.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
binary=$(realpath "${1:-target/release/chex}")
dtype=${2:-bf16}
group=chex_launches

perf probe --del "$group:*" >/dev/null 2>&1 || true
count=0
for symbol in $(nm "$binary" | awk '$2 == "T" && $3 ~ /^at[gm]?_/ { print $3 }'); do
  if perf probe -q -x "$binary" --add "$group:$symbol=$symbol" 2>/dev/null; then
    count=$((count + 1))
  fi
done
if [ "$count" -eq 0 ]; then
  echo "count-launches: no torch-sys entry points in $binary (build it with --features tch)" >&2
  exit 1
fi
trap 'perf probe --del "$group:*" >/dev/null 2>&1 || true' EXIT

calls() {
  "$here/with-libtorch.sh" perf stat -x, -e "$group:*" "$binary" bench --preset tiny \
    --device tch-cpu --dtype "$dtype" --figures rollout --repeats 1 --new-tokens "$1" \
    2>&1 >/dev/null | awk -F, '$1 ~ /^[0-9]+$/ && $1 > 0 { sub(/.*:/, "", $3); print $3, $1 }' \
    | sort
}
calls 1 >/tmp/count-launches.1
calls 11 >/tmp/count-launches.11
join -a 2 -e 0 -o 0,1.2,2.2 /tmp/count-launches.1 /tmp/count-launches.11 | awk '
  { per_step = ($3 - $2) / 20 }
  per_step > 0 && $1 ~ /^atg?_/ && $1 !~ /^at_(dim|shape|free|stride|device|scalar_type|data_ptr|shallow_clone|defined|requires_grad|tensor_of_data|copy_data)$/ {
    view = ($1 ~ /reshape|slice|narrow|transpose|view|broadcast|expand|squeeze|permute/)
    printf "%-28s %8.1f%s\n", $1, per_step, view ? "  (view)" : ""
    if (!view) total += per_step
  }
  END { printf "%-28s %8.1f\n", "launching calls per step", total }' | sort -k2 -n -r
