"""``Sampler``: MILI's sampling functions over numpy logits, drawn by the
Rust core's sampler (the one every ferrolm request uses).

>>> logits = np.random.randn(2, 100).astype(np.float32)
>>> Sampler.greedy_sampling(logits).tolist() == logits.argmax(-1).tolist()
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ferrolm import _core
from ferrolm.sampling import SamplingConfig


class Sampler:
    """Token sampling from logits ``[batch, vocab]`` (or one row ``[vocab]``).

    Each returns int64 token ids of shape ``logits.shape[:-1]``. Rows are
    drawn independently; ``seed`` makes a call reproducible (None: fresh
    randomness). Temperature 0 is greedy.
    """

    @staticmethod
    def top_k_top_p_sampling(logits: Any, temperature: float = 1.0, top_k: int = 50, top_p: float = 0.95,
                             *, seed: int | None = None) -> np.ndarray:
        """Keeps the ``top_k`` most likely tokens (0: all), then the smallest set
        reaching probability ``top_p``, and draws from ``softmax(logits / temperature)`` over them."""
        return _sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)

    @staticmethod
    def greedy_sampling(logits: Any) -> np.ndarray:
        """The most likely token of each row (the first one on ties)."""
        return _sample(logits, temperature=0.0, top_k=0, top_p=1.0, seed=None)

    @staticmethod
    def temperature_sampling(logits: Any, temperature: float = 1.0, *, seed: int | None = None) -> np.ndarray:
        """A draw from ``softmax(logits / temperature)`` over the whole vocabulary."""
        return _sample(logits, temperature=temperature, top_k=0, top_p=1.0, seed=seed)


def _sample(logits: Any, **knobs: Any) -> np.ndarray:
    array = np.asarray(logits)
    if array.ndim not in (1, 2) or array.shape[-1] == 0 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"logits must be a numeric [batch, vocab] or [vocab] array, got "
                         f"{array.dtype} {array.shape}")
    rows = np.ascontiguousarray(array.reshape(-1, array.shape[-1]), dtype=np.float32)
    config = SamplingConfig(min_p=0.0, repetition_penalty=1.0, **knobs)
    ids = _core.sample_rows(rows, config)
    return np.asarray(ids, dtype=np.int64).reshape(array.shape[:-1])
