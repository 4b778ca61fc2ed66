#!/usr/bin/env bash
# Runs a command with libtorch at hand for the `tch` backend (PyTorch 2.9.0, the version tch 0.22
# is built for). The first call installs torch==2.9.0 from PyPI into a cached virtual environment
# (about 4 GB with the NVIDIA runtime wheels the Linux wheel pulls in); later calls reuse it.
#
#   scripts/with-libtorch.sh cargo test --workspace --features ndarray,tch
#
# CHEX_TORCH_VENV overrides where the environment lives.
set -euo pipefail

torch_version=2.9.0
venv="${CHEX_TORCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/chex-grpo/torch-$torch_version}"

# The marker is written last, so an install that was interrupted is redone rather than trusted.
if [ ! -f "$venv/.chex-complete" ]; then
  echo "with-libtorch: installing torch==$torch_version into $venv (once)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --no-input --disable-pip-version-check --no-cache-dir \
    "torch==$torch_version"
  touch "$venv/.chex-complete"
fi

torch_dir=$(echo "$venv"/lib/python3*/site-packages/torch)
if [ ! -f "$torch_dir/lib/libtorch_cpu.so" ]; then
  echo "with-libtorch: no libtorch under $torch_dir; delete $venv to reinstall" >&2
  exit 1
fi

# torch-sys links against this folder; the loader finds it at run time. The NVIDIA libraries
# libtorch needs are found through libtorch's own RPATH inside the same environment.
export LIBTORCH="$torch_dir"
export LD_LIBRARY_PATH="$torch_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$@"
