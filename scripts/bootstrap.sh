#!/usr/bin/env bash
# Set up MedSegAI on a fresh machine: a virtual environment in .venv with PyTorch, slicer-core (real MRML
# classes for the CLI and the tests) and MedSegAILib installed in editable mode with its test extras.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
if ! $VPY -c "import torch" >/dev/null 2>&1; then
  echo "[bootstrap] installing PyTorch (torch 2.14.1, torchvision 0.29.1)"
  $VPY -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
if ! $VPY -c "import MedSegAILib, slicer, safetensors, SimpleITK, pytest, hypothesis, jsonschema, nrrd, nibabel" >/dev/null 2>&1; then
  echo "[bootstrap] installing MedSegAILib and its dependencies"
  $VPY -m pip install -q -e ".[test,train]"
fi
echo "[bootstrap] ready: $($VPY -c 'import torch, MedSegAILib; print("MedSegAILib", MedSegAILib.__version__, "torch", torch.__version__)')"
