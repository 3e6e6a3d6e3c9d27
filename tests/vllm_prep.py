"""Run with .venv-vllm's Python: turn the offline SmolLM2 GGUF into a Hugging Face folder vLLM
loads, and make a small LoRA adapter for it (rank 8 on q/v, random weights: a stand-in for a
fine-tuned voice; no real adapter ships offline).

    python tests/vllm_prep.py MODEL.gguf OUT_DIR   ->  OUT_DIR/base, OUT_DIR/anna
"""

import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
model.hf_quantizer = None  # dequantised on load; saved as plain weights
(out / "base").mkdir(parents=True, exist_ok=True)
model.save_pretrained(out / "base")
tok.save_pretrained(out / "base")
config = out / "base" / "config.json"
data = json.loads(config.read_text())
data.pop("quantization_config", None)  # vLLM would look for a GGUF loader
config.write_text(json.dumps(data, indent=2))
torch.manual_seed(0)
lora = get_peft_model(
    model,
    LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
)
lora.save_pretrained(out / "anna")
print("ok")
