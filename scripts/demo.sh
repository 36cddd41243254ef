#!/usr/bin/env bash
# The main job on the embedded default, offline, no API key: set up (idempotent), then
# record a few SmolLM2 units over the built-in corpus, explain, simulate and score them.
# Extra arguments go to `neuroscribe run` (e.g. a run directory, --max-units 4).
set -euo pipefail
cd "$(dirname "$0")/.."
NEUROSCRIBE_SKIP_SERVER=1 NEUROSCRIBE_SKIP_BROWSER=1 bash scripts/setup.sh
exec .venv/bin/neuroscribe run "$@"
