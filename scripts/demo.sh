#!/usr/bin/env bash
# README command 1: set up, then explain real photos (scikit-image's) with an ImageNet-pretrained
# EfficientNet-Lite0 and contrastive absLRP. Writes demo_out/photos.png and demo_out/report.md.
# Extra arguments go to `python -m lrpfx.apps.demo`; `--digits` runs the faster digits demo
# (a small CNN trained on the spot; demo_out/heatmaps.png).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
exec .venv/bin/python -m lrpfx.apps.demo --out demo_out "$@"
