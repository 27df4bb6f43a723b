#!/usr/bin/env bash
# Set up everything (scripts/bootstrap.sh) and run the test suite. Tests that need the real data in ../shared/data
# read MEDSEGAI_TEST_DATA and are skipped, with the reason, when it is unset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
exec .venv/bin/python -m pytest "$@"
