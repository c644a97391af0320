"""Shared fixtures: the committed HF reference models (tests/fixtures/models)."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

MODELS = Path(__file__).parent / "fixtures" / "models"
FIXTURES = sorted(p.name for p in MODELS.iterdir() if (p / "reference.safetensors").is_file())

# The gate on logits against HF's (``max_rel_error``) wherever the computation is
# f32 end to end: the CPU's exact path and its default path over safetensors (f32 KV
# cache), GGUF files on the exact path, the CUDA backend in float32, and the FP8 paths
# against the f32 model on FP8-rounded weights. Measured at most 9.6e-6 on every
# fixture (benchmarks/parity_errors.py; benchmarks/RESULTS.md): a tenfold margin
# for other CPUs, thread counts and GPUs. README's Exactness section states it;
# crates/ferrolm-core/tests/common/mod.rs holds the same bound for the Rust tests.
HF_TOLERANCE = 1e-4


class Reference:
    """HF's outputs for one fixture model (see tests/fixtures/make_fixtures.py)."""

    def __init__(self, name: str):
        self.path = MODELS / name
        self.tensors = load_file(str(self.path / "reference.safetensors"))

    def sequences(self):
        k = 0
        while f"tokens_{k}" in self.tensors:
            yield self.tensors[f"tokens_{k}"].tolist(), self.tensors[f"logits_{k}"]
            k += 1


@pytest.fixture(params=FIXTURES)
def reference(request) -> Reference:
    return Reference(request.param)


def max_rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref| per position, worst position."""
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    err = np.abs(ours - ref).max(axis=-1) / np.abs(ref).max(axis=-1)
    return float(err.max())


def chunked_logits(model, tokens: list[int], sizes=(1, 30, 64)) -> np.ndarray:
    """The logits of every position of `tokens` fed as prompt chunks of
    `sizes` (then the rest in one chunk), each continuing the cache."""
    rows, pos = [], 0
    for size in (*sizes, len(tokens)):
        chunk = tokens[pos : pos + size]
        if chunk:
            rows.append(model.forward([chunk], start_pos=pos)[0])
            pos += len(chunk)
    return np.concatenate(rows)


def chunked_then_decoded(model, tokens: list[int], decoded: int = 8 + 95) -> np.ndarray:
    """The logits of every position of `tokens`: prompt chunks (1, 30, 64
    and the rest) up to the last `decoded` positions, then one token at a time."""
    prompt = chunked_logits(model, tokens[: len(tokens) - decoded])
    rows = [model.forward([[t]], start_pos=p)[0] for p, t in enumerate(tokens) if p >= len(tokens) - decoded]
    return np.concatenate([prompt, *rows])


def load_state(model_dir: Path) -> dict[str, np.ndarray]:
    """A model directory's weights as float32 numpy arrays, shards merged.

    safetensors' numpy API cannot hold bfloat16, so tensors are decoded from
    the file's raw bytes here (bf16 is the top half of an f32).
    """
    dtypes = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
    state = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        if f.name == "reference.safetensors":
            continue
        raw = f.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n])
        header.pop("__metadata__", None)
        for name, info in header.items():
            start, end = info["data_offsets"]
            a = np.frombuffer(raw[8 + n + start : 8 + n + end], dtype=dtypes[info["dtype"]])
            if info["dtype"] == "BF16":
                a = (a.astype(np.uint32) << 16).view(np.float32)
            state[name] = a.astype(np.float32).reshape(info["shape"])
    return state


TOKENIZERS = Path(__file__).parent / "fixtures" / "tokenizers"


@pytest.fixture(scope="session")
def chat_model(tmp_path_factory) -> Path:
    """A tiny random Llama with SmolLM2's real tokenizer and chat template.

    Its text is gibberish, but everything around the model (templates,
    streaming, stop strings, cache reuse, history) behaves as with a real one.
    Made at test time: a committed copy would weigh megabytes.
    """
    from safetensors.numpy import save_file

    d = tmp_path_factory.mktemp("chat_model")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (d / name).write_bytes((TOKENIZERS / "smollm2" / name).read_bytes())
    config = {
        "architectures": ["LlamaForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 49152, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0, "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    (d / "config.json").write_text(json.dumps(config))
    from ferrolm import _core

    rng = np.random.default_rng(0)
    tensors = {}
    for name, shape in _core.parameter_shapes(config):
        if name.endswith("norm.weight"):
            tensors[name] = np.ones(shape, np.float32)
        else:
            tensors[name] = rng.normal(0, 0.5, shape).astype(np.float32)
    save_file(tensors, str(d / "model.safetensors"))
    return d
