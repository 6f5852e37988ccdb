#!/usr/bin/env bash
# Refresh requirements.lock: the exact versions of every Python package amvad and its tests use (torch
# aside: the CPU and CUDA builds share a version number and come from different indexes), installed by
# .ci/run and by the container image. Run it, then the whole test suite, and commit both together.
#   deploy/refresh-lock.sh                         # newest versions of everything
#   deploy/refresh-lock.sh --upgrade-package av    # one package; keep the other pins
# Needs uv (`pip install uv`) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(mktemp)"
trap 'rm -f "$exclude"' EXIT
echo torch >"$exclude"
upgrade=(--upgrade)
[[ $# -gt 0 ]] && upgrade=("$@")
uv pip compile pyproject.toml --extra test --excludes "$exclude" --python-version 3.11 "${upgrade[@]}" \
  --custom-compile-command "deploy/refresh-lock.sh" --quiet -o requirements.lock
