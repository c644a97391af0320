"""Long context on the GPU, and the GPU against the CPU reference backend.

A random Qwen3-family model (GQA, q/k norm, head_dim 64) with an 8k
context, made at test time from the core's own parameter list. On the CPU
emulator the prompt is 640 tokens (attention's cost grows with its square;
640 still spans 40 pages and splits decode attention along the sequence).
"""

import numpy as np
import pytest
from gpu_support import DEVICE, emulated, random_model, require_cuda

from conftest import max_rel_error
from ferrolm import Transformer

require_cuda()

pytestmark = pytest.mark.gpu

PROMPT = 640 if emulated() else 4096
MAX_SEQ_LEN = PROMPT + 128
DECODED = 8

CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 256,
    "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 64, "vocab_size": 512, "max_position_embeddings": 8192, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "tie_word_embeddings": True, "torch_dtype": "float32",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return random_model(tmp_path_factory.mktemp("long") / "model", CONFIG)


@pytest.fixture(scope="module")
def prompt():
    return np.random.default_rng(0).integers(0, CONFIG["vocab_size"], PROMPT).tolist()


def test_long_context_decode_matches_prefill(model_dir, prompt):
    """A PROMPT-token prompt in one pass, then again with its last 8 tokens
    decoded one at a time: the decode path (split along the sequence at this
    length) must give the prefill's logits (float32)."""
    model = Transformer.from_pretrained(model_dir, device=DEVICE, dtype="float32", max_seq_len=MAX_SEQ_LEN)
    full = model.forward([prompt])[0, -DECODED:]
    assert np.isfinite(full).all()
    # A second model: re-running from start_pos=0 on a nearly full pool is
    # refused before the old pages are released (a core limitation).
    del model
    model = Transformer.from_pretrained(model_dir, device=DEVICE, dtype="float32", max_seq_len=MAX_SEQ_LEN)
    n = len(prompt) - DECODED
    model.forward([prompt[:n]], start_pos=0)
    steps = [model.forward([[prompt[pos]]], start_pos=pos)[0, 0] for pos in range(n, len(prompt))]
    err = max_rel_error(np.stack(steps), full)
    assert err <= 1e-3, f"decode vs prefill at {n}..{len(prompt)}: max relative error {err:.2e}"


@pytest.mark.parametrize("length", [1, 37, min(1024, PROMPT - 8)])
def test_gpu_float32_matches_cpu(model_dir, prompt, length):
    """The same model on cuda (float32) and on the CPU: logits within 1e-4 relative,
    for the prompt and for two decode steps after it."""
    tokens = prompt[:length]
    logits = {}
    for device, dtype in (("cpu", None), (DEVICE, "float32")):
        model = Transformer.from_pretrained(model_dir, device=device, dtype=dtype, max_seq_len=MAX_SEQ_LEN)
        rows = [model.forward([tokens])[0]]
        for i, t in enumerate(prompt[length : length + 2]):
            rows.append(model.forward([[t]], start_pos=length + i)[0])
        logits[device] = np.concatenate(rows)
        del model
    err = max_rel_error(logits[DEVICE], logits["cpu"])
    assert err <= 1e-4, f"{length} tokens: GPU vs CPU max relative error {err:.2e}"
