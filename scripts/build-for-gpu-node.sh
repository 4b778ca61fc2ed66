#!/usr/bin/env bash
# Builds `chex` with the libtorch backend for a GPU node that has PyTorch but no Rust toolchain,
# against that node's exact PyTorch version, and writes a bundle to copy there:
#
#   scripts/build-for-gpu-node.sh 2.11.0 gpu-bundle
#   scp -r gpu-bundle node: && ssh node gpu-bundle/run.sh device --device tch-cuda:0
#
# OUT_DIR receives:
#   chex        the stripped command line, built with `--features cuda-graphs,profiler` (libtorch,
#               the decode step replayed as a CUDA graph, and `chex bench --profile`)
#   run.sh      runs a bundled program with the node's libtorch: `run.sh [PROGRAM] ARGS…`
#   tests/      with WITH_TESTS=1: the stripped model test programs, the trainer tests
#               (`training`, `trl_step`) and their fixtures, so the parity tests can run on the
#               GPU (`run.sh tests/hf_parity` with CHEX_TEST_DEVICES=tch-cuda:0)
#
# Only the headers and libraries of the wheel are used here. The CUDA libraries they refer to
# need not exist on this machine: the link leaves them for the node's loader to resolve.
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 TORCH_VERSION OUT_DIR   (e.g. $0 2.11.0 gpu-bundle)" >&2
  exit 2
fi
torch_version=$1
out=$2
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)

# The wheel for this platform; its libtorch is the same for every Python version.
cache="${XDG_CACHE_HOME:-$HOME/.cache}/chex-grpo/gpu-node/torch-$torch_version"
if [ ! -f "$cache/.chex-complete" ]; then
  rm -rf "$cache"
  mkdir -p "$cache/wheel"
  echo "build-for-gpu-node: fetching torch==$torch_version (headers and libraries only)" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
    --platform manylinux_2_28_x86_64 --dest "$cache/wheel" "torch==$torch_version"
  wheel=$(ls "$cache"/wheel/torch-*.whl)
  (cd "$cache" && python3 -m zipfile -e "$wheel" unpacked >/dev/null)
  mkdir -p "$cache/libtorch"
  mv "$cache/unpacked/torch/include" "$cache/unpacked/torch/lib" "$cache/unpacked/torch/share" \
    "$cache/unpacked/torch/version.py" "$cache/libtorch/"
  rm -rf "$cache/unpacked" "$cache/wheel"
  touch "$cache/.chex-complete"
fi

# The CUDA runtime's headers for the C++ side of the CUDA graph (csrc/cuda_graph.cpp), of the
# CUDA version this wheel was built with (its version.py; else its libcudart's major version).
cuda_include="$cache/cuda-include"
if [ ! -f "$cuda_include/.chex-complete" ]; then
  cuda=$(sed -n "s/^cuda: .*= '\([0-9.]*\)'.*/\1/p; s/^cuda = '\([0-9.]*\)'.*/\1/p" \
    "$cache/libtorch/version.py" 2>/dev/null | head -1 || true)
  if [ -z "$cuda" ]; then
    cuda=$(readelf -d "$cache/libtorch/lib/libtorch_cuda.so" |
      sed -n 's/.*libcudart\.so\.\([0-9]*\).*/\1.0/p' | head -1)
  fi
  echo "build-for-gpu-node: fetching the CUDA $cuda runtime headers" >&2
  rm -rf "$cuda_include" "$cache/cuda-wheels"
  mkdir -p "$cache/cuda-wheels" "$cuda_include"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --dest "$cache/cuda-wheels" \
    "nvidia-cuda-runtime==$cuda.*" "nvidia-cuda-crt==$cuda.*"
  for wheel in "$cache"/cuda-wheels/*.whl; do
    (cd "$cache/cuda-wheels" && python3 -m zipfile -e "$wheel" unpacked >/dev/null)
  done
  cp -r "$cache"/cuda-wheels/unpacked/nvidia/cu*/include/. "$cuda_include/"
  rm -rf "$cache/cuda-wheels"
  touch "$cuda_include/.chex-complete"
fi

export LIBTORCH="$cache/libtorch"
export CHEX_CUDA_INCLUDE="$cuda_include"
# tch 0.22 names 2.9.0; the C++ glue is compiled against this wheel's own headers instead.
export LIBTORCH_BYPASS_VERSION_CHECK=1
export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,--allow-shlib-undefined"
# Its own target folder: these flags and this libtorch would otherwise rebuild the usual one.
export CARGO_TARGET_DIR="$repo/target/gpu-node-$torch_version"

cd "$repo"
cargo build --release --features cuda-graphs,profiler -p chex-cli
cp "$CARGO_TARGET_DIR/release/chex" "$out/chex"
strip "$out/chex"

if [ "${WITH_TESTS:-0}" = 1 ]; then
  rm -rf "$out/tests"
  mkdir -p "$out/tests"
  { cargo test --release --features cuda-graphs -p chex-model --no-run --message-format=json
    cargo test --release --features cuda-graphs -p chex-grpo --test training --test trl_step --no-run \
      --message-format=json; } 2>/dev/null |
    python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], sys.argv[1] + "/" + m["target"]["name"])
' "$out/tests"
  find "$out/tests" -maxdepth 1 -type f -exec strip {} +
  # run.sh points the tests here through CHEX_MODEL_FIXTURES.
  cp -r crates/chex-model/tests/fixtures "$out/tests/fixtures"
  cp -r tests/fixtures/trl_step "$out/tests/trl_step_fixture"
fi

cat >"$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs a program of this bundle with the node's PyTorch: `run.sh [PROGRAM] ARGS…` (default chex).
# TORCH_LIB overrides where libtorch is (default: ask the node's python3 where torch is).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${TORCH_LIB:-}" ]; then
  TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
fi
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Nothing in the program names a symbol of libtorch_cuda, so without this its CUDA hooks never
# register and every CUDA tensor fails with "no CUDA implementation".
export LD_PRELOAD="$TORCH_LIB/libtorch_cuda.so${LD_PRELOAD:+:$LD_PRELOAD}"
export CHEX_MODEL_FIXTURES="${CHEX_MODEL_FIXTURES:-$here/tests/fixtures}"
export CHEX_TRL_STEP_FIXTURE="${CHEX_TRL_STEP_FIXTURE:-$here/tests/trl_step_fixture}"
program="$here/chex"
if [ $# -gt 0 ] && [ -x "$here/$1" ] && [ -f "$here/$1" ]; then
  program="$here/$1"
  shift
fi
exec "$program" "$@"
RUN
chmod +x "$out/run.sh"
echo "build-for-gpu-node: wrote $out (torch $torch_version):" >&2
du -sh "$out"/* >&2
