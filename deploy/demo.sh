#!/usr/bin/env bash
# Set up (if needed) and run the embedded default job on the bundled sample.
# The demo needs only Persona itself: no reference tools, no test or service extras.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
exec .venv/bin/persona demo "$@"
