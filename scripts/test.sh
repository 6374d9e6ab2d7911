#!/usr/bin/env bash
# The whole test suite, slow tests included (real SmolLM2, the default TinyWorld), after installing what
# it needs. `python -m pytest` alone runs the fast default suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh --dev
"$PY" -m pytest --run-slow -q -p no:cacheprovider "$@"
