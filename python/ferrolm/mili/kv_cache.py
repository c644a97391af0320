"""``KVCacheAllocator``: MILI's page-at-a-time allocator, a view
of the same Rust cache as ``ferrolm.PagedKVCache`` (page pool, reference
counts, page storage); nothing is stored on the Python side.

Differences from MILI's reference code, all deliberate: pages hold every
layer (the data methods take ``layer=0``), arrays are numpy float32 (torch
tensors on the CPU are accepted as input), the default device is the CPU,
and freeing a page that holds no reference raises ValueError instead of
passing silently.

>>> from types import SimpleNamespace
>>> config = SimpleNamespace(num_hidden_layers=2, num_key_value_heads=2, head_dim=4)
>>> allocator = KVCacheAllocator(config, max_seq_length=64)
>>> page = allocator.allocate_page()
>>> allocator.get_page(page).shape
(16, 2, 4)
"""

from __future__ import annotations

from typing import Any

from ferrolm._validate import at_least
from ferrolm.kv import PagedKVCache

__all__ = ["KVCacheAllocator"]


class KVCacheAllocator(PagedKVCache):
    """Allocate and manage KV cache memory (MILI's ``KVCacheAllocator``).

    Args:
        config: a model config with ``num_hidden_layers``,
            ``num_key_value_heads`` and ``head_dim`` (e.g. ``Qwen3Config``).
        max_batch_size: kept for MILI's callers (the pool is shared by all
            sequences; its size comes from ``num_pages``).
        max_seq_length: sets the default pool size.
        dtype: ``"float16"`` (values are rounded to f16 when written) or
            ``"float32"``; numpy dtypes are accepted.
        device: ``"cpu"``, ``"cuda[:N]"`` or a GPU index (the GPU stores float32).
        page_size: token positions per page (MILI: 16).
        num_pages: pages in the pool; default ``max_seq_length // page_size + 1``
            as MILI. Each page holds every layer, so the pool can take up
            ``num_pages * page_size * num_layers * 2 * num_kv_heads * head_dim``
            values of ``dtype`` (on the CPU a page's memory is allocated when
            it is first written).
        num_layers: layers to store (default ``config.num_hidden_layers``).

    Exhaustion raises ``KVCacheFullError`` (a RuntimeError:
    "Insufficient pages in KV cache ...").
    """

    def __init__(self, config: Any, max_batch_size: int = 64, max_seq_length: int = 32768,
                 dtype: Any = "float16", device: str | int = "cpu", *, page_size: int = 16,
                 num_pages: int | None = None, num_layers: int | None = None):
        at_least(page_size, "page_size", 1)
        if num_pages is None:
            num_pages = max_seq_length // page_size + 1
        super().__init__(num_pages, page_size, config, dtype, device, num_layers=num_layers)
        self.max_batch_size = max_batch_size
        self.max_seq_length = max_seq_length

    def allocate_page(self) -> int:
        """Allocates a free page (one reference) and returns its id; raises
        ``KVCacheFullError`` (a RuntimeError) when every page is in use."""
        return self._core.allocate_page()

    def free_page(self, page_id: int) -> None:
        """Drops one reference from the page; with none left it is free again."""
        self._core.free_pages([page_id])

    def add_page_reference(self, page_id: int) -> None:
        """Adds a reference to the page (sharing it)."""
        self._core.add_reference([page_id])
