#!/usr/bin/env bash
# Set up everything (scripts/bootstrap.sh) and run the test suite. Tests that need the real data in ../shared/data
# read MEDSEGAI_TEST_DATA and are skipped, with the reason, when it is unset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
# DiffDRR 0.6.1 is the reference for Testing/test_drr_diffdrr.py. Its declared dependencies are heavy (pyvista,
# timm, kornia...) but its rendering path needs only these; torch stays pinned to the venv's version.
if ! .venv/bin/python -c "import diffdrr.drr" >/dev/null 2>&1; then
    .venv/bin/pip install --quiet --no-deps diffdrr==0.6.1
    .venv/bin/pip install --quiet torchio einops fastcore pandas \
        -c <(echo "torch==$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])')")
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
exec .venv/bin/python -m pytest "$@"
