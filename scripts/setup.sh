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
# the stamp changes with the project's requirements and with how this script installs them
stamp=.venv/.installed-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$EXTRAS
if [ ! -f "$stamp" ]; then
  echo "==> installing the project (first time: llama.cpp compiles for a few minutes)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  find_links=()
  if [[ ",$EXTRAS," == *",embedded-llm,"* ]]; then
    # llama.cpp compiles for this CPU (-march=native) but without AMX: its AMX matrix kernels
    # crash on the first request on some Sapphire Rapids machines (ggml-org/llama.cpp#20824),
    # and the small models we run gain nothing from them. The wheel is kept per CPU and
    # flags, so a later fresh checkout on this machine installs it without compiling again.
    llama=$(grep -o 'llama-cpp-python\[server\]==[0-9.]*' pyproject.toml | cut -d= -f3)
    flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
    key=$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null; echo "$llama $flags") | sha256sum | cut -c1-12)
    wheels=${XDG_CACHE_HOME:-$HOME/.cache}/voice-worker/wheels/llama-$key
    if ! ls "$wheels"/llama_cpp_python-"$llama"-*.whl >/dev/null 2>&1; then
      echo "==> compiling llama.cpp $llama for this CPU (a few minutes, once per machine)" >&2
      CMAKE_ARGS="-DCMAKE_C_FLAGS='$flags' -DCMAKE_CXX_FLAGS='$flags'" \
        .venv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps --no-cache-dir \
        "llama-cpp-python==$llama" -w "$wheels"
    fi
    find_links=(--find-links "$wheels")
    # replaces a build of the same version already in .venv (an earlier native build with AMX)
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --force-reinstall \
      "$wheels"/llama_cpp_python-"$llama"-*.whl
  fi
  .venv/bin/python -m pip install --disable-pip-version-check "${find_links[@]}" -e ".[$EXTRAS]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

echo "==> model assets" >&2
.venv/bin/python -m worker download-files
