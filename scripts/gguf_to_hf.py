"""Dequantize a GGUF checkpoint (transformers' GGUF loader) into a plain HF safetensors dir."""
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

src, gguf_file, out = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf_file)
model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf_file, dtype=torch.float32)
config = model.config
if hasattr(config, "quantization_config"):
    del config.quantization_config
plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
missing = plain.load_state_dict(model.state_dict(), strict=False)
print(missing)
plain.save_pretrained(out)
tok.save_pretrained(out)
print(type(plain).__name__, config.tie_word_embeddings, config.max_position_embeddings,
      tok.eos_token, tok.pad_token, tok.convert_tokens_to_ids(["<|endoftext|>", "yes", "no"]))
