#!/usr/bin/env bash
# README command 1: set up, then explain handwritten digits with a CNN trained on the spot.
# Writes demo_out/heatmaps.png and demo_out/report.md. Extra arguments go to `python -m lrpfx.apps.demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec .venv/bin/python -m lrpfx.apps.demo --out demo_out "$@"
