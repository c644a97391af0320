"""Shared by the GPU tests: the skip guard, the device, and random model directories.

Not a ``conftest.py`` on purpose: the suite's tests import ``conftest``
(tests/conftest.py) by name, and a second ``conftest`` module here would
shadow it for whichever tests are collected after this folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import ferrolm

# The GPU the tests run on ("cuda" is the first); FERROLM_TEST_DEVICE=cuda:1 picks another.
DEVICE = os.environ.get("FERROLM_TEST_DEVICE", "cuda")


def cuda_skip_reason() -> str | None:
    """Why the GPU tests cannot run here, or None when they can."""
    available = getattr(ferrolm, "cuda_available", None)
    if available is None:
        return f"ferrolm {ferrolm.__version__} has no CUDA backend (ferrolm.cuda_available is missing)"
    if not available():
        why = getattr(ferrolm, "cuda_unavailable_reason", lambda: None)()
        return f"CUDA is not usable here: {why or 'no reason given'}"
    return None


def require_cuda() -> None:
    """Skips the calling test module when CUDA is unusable (one reason for all).

    With FERROLM_REQUIRE_GPU=1 (set by ``scripts/gpu-check run``) the module
    fails instead, so a GPU round cannot pass by skipping everything.
    """
    reason = cuda_skip_reason()
    if reason is None:
        return
    if os.environ.get("FERROLM_REQUIRE_GPU") == "1":
        pytest.fail(f"FERROLM_REQUIRE_GPU=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def emulated() -> bool:
    """Whether "cuda" is the CPU emulator here (FERROLM_CUDA_EMULATOR=1): it
    runs every kernel thread as a fiber, so long prompts are shortened there."""
    return ferrolm.cuda_emulated()


def write_tokenizer(model_dir: Path, vocab_size: int) -> None:
    """A word-level ``tokenizer.json`` where token ``i`` is the word ``t<i>``.

    ``LLM`` and ``AsyncEngine`` load a tokenizer with the model; random and
    fixture models have none, and the tests pass token ids anyway.
    """
    vocab = {f"t{i}": i for i in range(vocab_size)}
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"},
    }
    (model_dir / "tokenizer.json").write_text(json.dumps(tokenizer))


def random_model(model_dir: Path, config: dict, seed: int = 0) -> Path:
    """Writes ``config`` and float32 random weights of its shapes (from the core's
    own parameter list) into ``model_dir``, plus a word-level tokenizer.

    Linear weights ~ N(0, 1/fan_in) keep activations O(1) at any width, so
    attention is neither uniform nor one-hot; norm weights are drawn around 1
    so a kernel that drops them is caught.
    """
    from safetensors.numpy import save_file

    from ferrolm import _core

    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in _core.parameter_shapes(config):
        if name.endswith("norm.weight"):
            tensors[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif name.endswith("embed_tokens.weight"):
            tensors[name] = rng.normal(0.0, 1.0, shape).astype(np.float32)
        else:
            tensors[name] = rng.normal(0.0, shape[-1] ** -0.5, shape).astype(np.float32)
    save_file(tensors, str(model_dir / "model.safetensors"))
    write_tokenizer(model_dir, config["vocab_size"])
    return model_dir


def greedy(max_tokens: int):
    """Greedy sampling with every other knob neutral."""
    from ferrolm import SamplingConfig

    return SamplingConfig(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                          max_tokens=max_tokens)
