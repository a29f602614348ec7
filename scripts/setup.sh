#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install lrpfx with its test extras.
# Sourced by scripts/demo.sh and scripts/test.sh; reinstalls only when pyproject.toml or the
# constraints change.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv
stamp_now=$(cat pyproject.toml constraints-dev.txt | sha256sum | cut -c1-16)
if [ ! -x "$VENV/bin/python" ]; then
  echo "[lrpfx] creating virtual environment $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$VENV/.lrpfx-stamp" 2>/dev/null)" != "$stamp_now" ]; then
  echo "[lrpfx] installing lrpfx[test] (torch 2.14.1 / torchvision 0.29.1; a few minutes the first time)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 \
    | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints-dev.txt \
    -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
  "$VENV/bin/python" -c "import lrpfx, torch, timm, torchvision" || {
    echo "[lrpfx] installation failed" >&2; exit 1; }
  echo "$stamp_now" > "$VENV/.lrpfx-stamp"
fi
