#!/usr/bin/env bash
# Set up everything from nothing and run the whole test suite (what CI runs).
#   bash scripts/test.sh [pytest args]
# Creates/updates the virtual environment in $VENV (default .venv), installs the package
# with its test extras (torch pinned through constraints.txt), checks the code with ruff and
# runs pytest under a virtual X server so that the napari viewer tests run too, then the
# non-GUI tests once more on one thread.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

bash scripts/install-system-deps.sh
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check \
  -c constraints.txt -e ".[testing,lint]"

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .

echo "== pytest"
export PATH="$PWD/$VENV/bin:$PATH"
xvfb-run -a -s "-screen 0 1600x1000x24" "$VENV/bin/python" -m pytest "$@"

# Once more on one thread (the full run above uses torch's default thread count): results
# that depend on one machine's float rounding (FFT/BLAS work split across threads) show up
# here instead of on a user's machine (issue 11). Only for a full run (no pytest args);
# SIM_UQ_ONE_THREAD_PASS=0 skips it.
if [ "$#" -eq 0 ] && [ "${SIM_UQ_ONE_THREAD_PASS:-1}" != "0" ]; then
  echo "== pytest, one thread (OMP_NUM_THREADS=1), without GUI and slow tests"
  # (under Xvfb too: some widget-helper tests need a Qt application, not a viewer)
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 xvfb-run -a -s "-screen 0 1600x1000x24" \
    "$VENV/bin/python" -m pytest -q -m "not gui and not slow"
fi
