"""Shared fixtures: the committed HF reference models (tests/fixtures/models)."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

MODELS = Path(__file__).parent / "fixtures" / "models"
FIXTURES = sorted(p.name for p in MODELS.iterdir() if (p / "reference.safetensors").is_file())


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
