#!/usr/bin/env bash
# Set everything up on a fresh machine, then run the agent: open the printed address and talk.
# Extra arguments go to `python -m worker dev` (e.g. --http 127.0.0.1:9000).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/python -m worker dev "$@"
