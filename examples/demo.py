"""Loads a tiny committed model and shows what the engine computes.

Run with ``bash scripts/demo`` (builds ferrolm first), or ``python
examples/demo.py [MODEL_DIR]`` once ferrolm is installed.
"""

import sys
from pathlib import Path

import numpy as np

from ferrolm import Transformer

root = Path(__file__).resolve().parent.parent
model_dir = sys.argv[1] if len(sys.argv) > 1 else root / "tests/fixtures/models/qwen3_f32"

model = Transformer.from_pretrained(model_dir, max_batch_size=2)
print(model)
prompt = [1, 17, 42, 99, 7, 3]
logits = model.forward([prompt])
print(f"logits: shape {logits.shape}, last position top-5 ids {np.argsort(-logits[0, -1])[:5]}")
tokens = model.generate([prompt, prompt[:3]], max_gen_len=12, temperature=0)
for p, t in zip([prompt, prompt[:3]], tokens):
    print(f"greedy continuation of {p}: {t}")
