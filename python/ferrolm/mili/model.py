"""``Qwen3Model``: MILI's model class over the Rust core's ``Transformer``.

``forward`` runs a padded batch as the ragged batch it really is: for each
row only the positions its attention mask marks, continuing that row's own
KV cache, so left- and right-padded batches give each sequence the logits it
would get alone. ``generate`` goes through the core's engine and sampler.

>>> config = Qwen3Config.from_pretrained("path/to/model")                 # doctest: +SKIP
>>> model = Qwen3Model(config, WeightLoader("path/to/model", config))      # doctest: +SKIP
>>> logits, kv_cache = model.forward(np.array([[1, 2, 3]]))                # doctest: +SKIP
>>> logits, kv_cache = model.forward(np.array([[4]]), kv_cache=kv_cache)   # doctest: +SKIP
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ferrolm import _core, hub
from ferrolm._device import core_device
from ferrolm._validate import of_type, positive
from ferrolm.mili.config import Qwen3Config
from ferrolm.mili.tokenizer import QwenTokenizer
from ferrolm.mili.weights import WeightLoader, check_config
from ferrolm.sampling import SamplingConfig

_cache_ids = itertools.count()


class Qwen3Model:
    """A language model for inference (MILI's ``Qwen3Model``).

    Args:
        config: the model's ``Qwen3Config`` (must match the checkpoint).
        weight_loader: says which checkpoint, the dtype, and whether the
            weights are FP8 (after ``quantize_to_fp8()``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a GPU index (default:
            the loader's device).
        max_batch_size: most rows one ``forward`` call may have.
        kv_dtype: CPU KV cache precision, ``"f16"`` or ``"f32"`` (default: f16
            for quantized weights, f32 otherwise).
    """

    def __init__(self, config: Qwen3Config, weight_loader: WeightLoader, device: str | int | None = None,
                 *, max_batch_size: int = 4, kv_dtype: str | None = None) -> None:
        of_type(weight_loader, "weight_loader", WeightLoader, "a WeightLoader")
        self.config = config
        self.weight_loader = weight_loader
        self.device = weight_loader.device if device is None else core_device(device)
        path = hub.resolve(weight_loader.model_path)
        check_config(config, path)
        dtype = weight_loader.dtype
        quantize = weight_loader.quantize or config.quantize
        if self.device == "cpu" and (dtype != "float32" or quantize):
            # The CPU's default path: weights as stored (or as quantized at
            # load), which FP8 weights ask for even under WeightLoader's
            # default dtype, float32 (MILI's default).
            dtype = None
        self.max_batch_size = positive(max_batch_size, "max_batch_size")
        self._core = _core.Model.from_pretrained(str(path), self.device, config.max_seq_len, self.max_batch_size,
                                                 dtype, quantize, kv_dtype)
        # A model directory without tokenizer files still runs forward on token ids.
        try:
            self.tokenizer: QwenTokenizer | None = QwenTokenizer(path)
        except FileNotFoundError:
            self.tokenizer = None
        self._cache_id = next(_cache_ids)
        self._step = 0

    def forward(self, input_ids: Any, attention_mask: Any = None,
                kv_cache: dict | None = None) -> tuple[np.ndarray, dict]:
        """Logits ``[batch, seq, vocab]`` (float32) and the KV cache to continue from.

        Args:
            input_ids: ``[batch, seq]`` token ids.
            attention_mask: ``[batch, seq]`` (or ``[batch, past + seq]``, HF
                style: its last ``seq`` columns are used) of 1 for real tokens
                and 0 for padding, left or right. Padded positions are not
                run; their logits are 0.
            kv_cache: what the previous call returned, to continue each row
                after its earlier tokens; None starts every row afresh. Only
                the latest returned cache is valid (the model holds the data).
        """
        ids = _ids(input_ids)
        batch, seq = ids.shape
        if batch > self.max_batch_size:
            raise ValueError(f"batch of {batch} rows but max_batch_size is {self.max_batch_size}; "
                             "build the model with a larger max_batch_size")
        mask = _mask(attention_mask, batch, seq)
        lengths = self._lengths(kv_cache, batch)
        items = [(row, lengths[row], ids[row][mask[row]].tolist()) for row in range(batch) if mask[row].any()]
        if not items:
            raise ValueError("attention_mask masks every position: there is nothing to run")
        flat = self._core.forward_ragged(items)
        self._step += 1
        logits = np.zeros((batch, seq, flat.shape[-1]), dtype=np.float32)
        logits[mask] = flat  # boolean indexing visits rows in order, positions in order: the ragged layout
        new_lengths = [length + int(m.sum()) for length, m in zip(lengths, mask)]
        return logits, {"seq_lens": new_lengths, "cache_id": self._cache_id, "step": self._step}

    __call__ = forward

    def generate(self, prompt: str, max_tokens: int = 128, temperature: float = 1.0, top_p: float = 0.95,
                 top_k: int = 50, *, seed: int | None = None) -> str:
        """Continues ``prompt`` (plain text, no chat template) with the core's
        sampler; returns the new text. Stops at an end-of-sequence token."""
        of_type(prompt, "prompt", str, "a string")
        if self.tokenizer is None:
            raise RuntimeError(f"{self.weight_loader.model_path} has no tokenizer files "
                               "(tokenizer.json): generate needs one; forward takes token ids")
        tokens = self.tokenizer.encode(prompt)
        sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, min_p=0.0,
                                  repetition_penalty=1.0, max_tokens=max_tokens, seed=seed)
        [new] = self._core.generate_with([tokens], sampling)
        return self.tokenizer.decode(new)

    def _lengths(self, kv_cache: dict | None, batch: int) -> list[int]:
        if kv_cache is None:
            return [0] * batch
        if not isinstance(kv_cache, dict) or kv_cache.get("cache_id") != self._cache_id:
            raise ValueError("kv_cache must be a cache this model's forward returned (or None to start afresh)")
        if kv_cache.get("step") != self._step:
            raise ValueError("kv_cache is stale: pass the cache returned by this model's latest forward call")
        if len(kv_cache["seq_lens"]) != batch:
            raise ValueError(f"kv_cache holds {len(kv_cache['seq_lens'])} rows but input_ids has {batch}")
        return list(kv_cache["seq_lens"])

    def __repr__(self) -> str:
        c = self.config
        return f"Qwen3Model({c.architecture}, layers={c.num_hidden_layers}, device={self.device!r})"


def _ids(input_ids: Any) -> np.ndarray:
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.shape[1] == 0 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"input_ids must be a non-empty 2-D integer array [batch, seq], got {ids.dtype} {ids.shape}")
    if (ids < 0).any():
        raise ValueError("input_ids contains negative token ids")
    return ids.astype(np.int64, copy=False)


def _mask(attention_mask: Any, batch: int, seq: int) -> np.ndarray:
    if attention_mask is None:
        return np.ones((batch, seq), dtype=bool)
    mask = np.asarray(attention_mask)
    if mask.ndim != 2 or mask.shape[0] != batch or mask.shape[1] < seq:
        raise ValueError(f"attention_mask must be [batch, seq] = [{batch}, {seq}] "
                         f"(or [batch, past + seq]), got {mask.shape}")
    mask = mask[:, mask.shape[1] - seq:]
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
    return mask.astype(bool)
