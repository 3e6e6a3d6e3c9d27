"""Run with .venv-vllm's Python: turn the offline SmolLM2 GGUF into a Hugging Face folder vLLM
loads, and make small LoRA adapters for it (rank 8 on q/v, random weights, one seed per name:
stand-ins for fine-tuned voices; no real adapter ships offline).

    python tests/vllm_prep.py MODEL.gguf OUT_DIR [NAME ...]
        ->  OUT_DIR/base, OUT_DIR/adapters/NAME for each NAME (default: anna)
"""

import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
names = sys.argv[3:] or ["anna"]
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
for seed, name in enumerate(names):
    torch.manual_seed(seed)
    lora = get_peft_model(
        model,
        LoraConfig(
            r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    )
    lora.save_pretrained(out / "adapters" / name)
    model = lora.unload()  # the base again, for the next adapter
print("ok")
