"""``PagedKVCache``: MILI's paged KV cache with reference counting, a thin
view over the Rust cache the engine uses (``ferrolm._core.PagedKVCache``:
its page pool, prefix cache and page storage).

Without a ``config`` it is bookkeeping only (page ids and reference counts).
With one, every page also stores ``page_size`` positions of keys and values
for every layer, read and written as numpy float32 arrays of shape
``[positions, num_kv_heads, head_dim]``:

>>> cache = PagedKVCache(num_pages=8)
>>> pages = cache.allocate_pages(3)
>>> cache.add_reference(pages[:1]); cache.free_pages(pages)
>>> cache.stats()["used_pages"]
1
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ferrolm import _core
from ferrolm._core import KVCacheFullError
from ferrolm._device import core_device

__all__ = ["KVCacheFullError", "PagedKVCache"]


def dtype_name(dtype: Any) -> str:
    """``"float16"`` / ``"float32"`` from a string, a numpy dtype, or a torch
    dtype (by its name; torch is never imported). The core rejects others."""
    if isinstance(dtype, str):
        return dtype.removeprefix("torch.")
    if str(dtype).startswith("torch."):
        return str(dtype).removeprefix("torch.")
    try:
        return np.dtype(dtype).name
    except TypeError:
        raise ValueError(f"dtype {dtype!r} is not known; use \"float16\" or \"float32\"") from None


def kv_geometry(config: Any, num_layers: int | None = None) -> tuple[int, int, int]:
    """``(num_layers, num_kv_heads, head_dim)`` of a model config (any object
    with ``num_hidden_layers``, ``num_key_value_heads`` and ``head_dim``, or
    ``hidden_size`` and ``num_attention_heads`` instead of ``head_dim``)."""

    def field(name: str) -> int:
        if not hasattr(config, name):
            raise ValueError(f"config has no `{name}`; pass a model config such as Qwen3Config")
        return int(getattr(config, name))

    layers = field("num_hidden_layers") if num_layers is None else int(num_layers)
    kv_heads = field("num_key_value_heads")
    head_dim = getattr(config, "head_dim", None)
    if head_dim is None:
        head_dim = field("hidden_size") // field("num_attention_heads")
    return layers, kv_heads, int(head_dim)


class PagedKVCache:
    """Paged KV cache with reference counting (MILI's ``PagedKVCache``).

    Args:
        num_pages: pages in the pool.
        page_size: token positions per page.
        config: a model config (see ``kv_geometry``); without one the cache
            is bookkeeping only and the data methods raise ValueError.
        dtype: storage precision, ``"float16"`` (values are rounded to f16
            when written) or ``"float32"``; numpy dtypes are accepted.
        device: ``"cpu"``, ``"cuda[:N]"`` or a GPU index (the GPU stores float32).
        num_layers: layers to store (default: ``config.num_hidden_layers``).
    """

    def __init__(self, num_pages: int, page_size: int = 16, config: Any = None, dtype: Any = "float16",
                 device: str | int = "cpu", *, num_layers: int | None = None):
        layers, kv_heads, head_dim = (None, None, None) if config is None else kv_geometry(config, num_layers)
        self._core = _core.PagedKVCache(num_pages, page_size, layers, kv_heads, head_dim,
                                        dtype=dtype_name(dtype), device=core_device(device))
        self.config = config

    @property
    def page_size(self) -> int:
        return self._core.page_size

    @property
    def num_pages(self) -> int:
        return self._core.num_pages

    @property
    def dtype(self) -> str:
        return self._core.dtype

    @property
    def device(self) -> str:
        return self._core.device

    def allocate_pages(self, num_pages: int) -> list[int] | None:
        """Takes ``num_pages`` pages, each with one reference, or returns None
        (taking nothing) when fewer are free."""
        return self._core.allocate_pages(num_pages)

    def add_reference(self, page_ids: Iterable[int]) -> None:
        """Adds a reference to each page (sharing it)."""
        self._core.add_reference(list(page_ids))

    def free_pages(self, page_ids: Iterable[int]) -> None:
        """Drops one reference from each page; a page left without references is free again."""
        self._core.free_pages(list(page_ids))

    def ref_count(self, page_id: int) -> int:
        return self._core.ref_count(page_id)

    def stats(self) -> dict:
        """``{"total_pages", "used_pages", "cached_pages", "free_pages", "available_pages", "page_size"}``.

        Every page is in one of three states: ``used_pages`` are held by
        requests or references; ``cached_pages`` are held only by the prefix
        cache (reclaimable: taken, oldest first, when the free list runs out);
        ``free_pages`` are on the free list, holding nothing. ``available_pages``
        (free + cached) is what new pages can come from.
        """
        return self._core.stats()

    def get_page(self, page_id: int, cache_type: str = "k", *, layer: int = 0) -> np.ndarray:
        """One allocated page's keys (``'k'``) or values (``'v'``) of ``layer``:
        float32 ``[page_size, num_kv_heads, head_dim]``."""
        return self._core.read_page(page_id, cache_type, layer)

    def gather_pages(self, page_ids: Iterable[int], seq_len: int, cache_type: str = "k", *,
                     layer: int = 0) -> np.ndarray:
        """Positions ``0..seq_len`` over ``page_ids`` in order (position ``p`` is
        offset ``p % page_size`` of ``page_ids[p // page_size]``): float32
        ``[seq_len, num_kv_heads, head_dim]``."""
        return self._core.gather_pages(list(page_ids), seq_len, cache_type, layer)

    def write_pages(self, page_ids: Iterable[int], data: Any, cache_type: str = "k", *, layer: int = 0) -> None:
        """Writes ``data`` (``[n, num_kv_heads, head_dim]``: numpy, a CPU torch
        tensor, nested lists) to positions ``0..n`` over ``page_ids``."""
        array = np.ascontiguousarray(np.asarray(data, dtype=np.float32))
        self._core.write_pages(list(page_ids), array, cache_type, layer)
