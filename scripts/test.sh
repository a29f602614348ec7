#!/usr/bin/env bash
# README command 2: set up, lint, type-check the engine, and run the whole test suite. Exits non-zero on any failure,
# including "no tests collected" (pytest exit code 5). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh
echo "[lrpfx] ruff"
.venv/bin/ruff check lrpfx tests bench examples
echo "[lrpfx] mypy (lrpfx/core, lrpfx/passes, lrpfx/rules)"
.venv/bin/mypy
echo "[lrpfx] pytest"
# two workers, one thread each: most of the time is Python-side graph capture
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
set +e
.venv/bin/python -m pytest -n "${LRPFX_TEST_WORKERS:-2}" --dist loadfile -p no:cacheprovider \
  --hypothesis-profile=ci "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "[lrpfx] pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit "$status"
