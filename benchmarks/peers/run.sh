#!/usr/bin/env bash
# One command: benchmarks/peers/run.sh [compare.py options, e.g. --quick]
#
# Makes a virtual environment of its own (benchmarks/peers/.venv, git-ignored) with aflow
# (editable, from this checkout) and its peers, so the peers never become aflow
# dependencies; then runs compare.py and writes the plot and the rows as JSON here.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q -r requirements.txt
exec .venv/bin/python compare.py --plot "$here/performance.png" --json "$here/results.json" "$@"
