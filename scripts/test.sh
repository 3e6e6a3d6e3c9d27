#!/usr/bin/env bash
# Set everything up on a fresh machine and run the whole test suite (lint, types, tests).
#   --offline   run the tests with the network cut off (a private network namespace with
#               only loopback), proving nothing reaches a model hub after set-up.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

offline=0
if [ "${1:-}" = "--offline" ]; then offline=1; shift; fi

# System packages the tests use: espeak-ng and sox make caller audio, Chromium is the browser,
# SIPp (sip-tester) and baresip are the SIP peers, redis-server backs the router tests.
need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || need+=(chromium)
command -v npm >/dev/null || need+=(npm)
command -v sipp >/dev/null || need+=(sip-tester)
command -v baresip >/dev/null || need+=(baresip-core)
command -v redis-server >/dev/null || need+=(redis-server)
# LiveKit SIP links Opus and SoX's resampler (cgo); pkg-config finds them
command -v pkg-config >/dev/null || need+=(pkg-config)
for lib in opus:libopus-dev opusfile:libopusfile-dev soxr:libsoxr-dev; do
  command -v pkg-config >/dev/null && pkg-config --exists "${lib%%:*}" || need+=("${lib#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "error: please install: ${need[*]}" >&2
    exit 2
  fi
fi

EXTRAS=embedded-llm,orpheus,fallback,dev ./scripts/setup.sh
# vLLM for the CPU in its own environment, for the router integration test (once per machine)
./scripts/setup-vllm.sh
# the LiveKit web page's browser SDK (npm), so its test serves the real file, and SmolLM2
# (the vLLM router test serves it; the LLM plumbing tests run on it, being the fastest)
.venv/bin/python -m worker download-files --with livekit-client --with smollm2 --with smart-turn >/dev/null
# LiveKit server and SIP from their Go modules, once per machine (kept in the data directory),
# and Docker Compose, which validates infra/compose.yaml (the Docker client here has no plugin)
.venv/bin/python -m infra.livekit install --compose

echo "==> ruff" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy" >&2
.venv/bin/mypy worker plugins telephony infra

echo "==> fuzzing the network-facing parsers (10,000 inputs each)" >&2
.venv/bin/python scripts/fuzz.py --n 10000 2>/dev/null

run=(.venv/bin/python -m pytest -ra "$@")
if [ $offline = 1 ]; then
  if unshare -rn true 2>/dev/null; then
    echo "==> pytest, network cut off (a private namespace with no route out)" >&2
    # WebRTC peers never use loopback for ICE, so the namespace gets one veth pair with a
    # documentation address (TEST-NET-1): the browser and the worker meet on it, and nothing
    # in the namespace leads anywhere else.
    set +e
    unshare -rn sh -c '
      ip link set lo up &&
      ip link add vt0 type veth peer name vt1 && ip addr add 192.0.2.1/24 dev vt0 &&
      ip link set vt0 up && ip link set vt1 up || echo "warning: no veth; WebRTC may not connect" >&2
      exec "$@"' sh "${run[@]}"
    rc=$?
    set -e
  else
    echo "warning: cannot create a network namespace here; running with the network on" >&2
    set +e; "${run[@]}"; rc=$?; set -e
  fi
else
  echo "==> pytest" >&2
  set +e; "${run[@]}"; rc=$?; set -e
fi
if [ $rc = 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit $rc
