#!/usr/bin/env bash
# Build the documentation site into site/ (or the folder given with -d/--site-dir), strictly: a broken
# link, a missing reference or a page left out of the navigation fails the build. Offline: nothing is
# downloaded. Needs the docs extra: pip install -e ".[docs]" (bash scripts/setup.sh --dev installs it).
#   bash scripts/docs.sh                 build into site/
#   bash scripts/docs.sh -d /tmp/site    build elsewhere
#   bash scripts/docs.sh serve           preview at http://127.0.0.1:8000 (mkdocs serve)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ "${1:-}" = "serve" ]; then
  shift
  exec "$PY" -m mkdocs serve "$@"
fi
exec "$PY" -m mkdocs build --strict "$@"
