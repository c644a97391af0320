"""MILI's ``RadixAttentionCache``: requests whose prompts start with the same
tokens share those tokens' KV pages. A view of the engine's prefix cache
(``ferrolm._core.PagedKVCache``, the Rust ``KvCache``): a prompt's full pages
are registered under a hash of every token up to their end, and a later
prompt takes the longest run of its leading full pages found there, exactly
as the engine's scheduler does (at least one prompt token is always left to
compute, as its logits are needed). Removed requests' full pages stay cached,
least recently used first out, until the pool needs them.

>>> cache = RadixAttentionCache(num_pages=8, page_size=4)
>>> cache.add_request("a", list(range(10)))["cached_tokens"]
0
>>> cache.add_request("b", list(range(10)))["cached_tokens"]
8
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ferrolm._validate import at_least, of_type
from ferrolm.kv import PagedKVCache
from ferrolm.mili.kv_cache import KVCacheAllocator

__all__ = ["RadixAttentionCache"]


class RadixAttentionCache:
    """Cache manager with RadixAttention-style prefix sharing.

    Args:
        config: a model config (see ``KVCacheAllocator``); without one (and
            without ``allocator``) the cache is bookkeeping only and
            ``get_kv_cache`` raises ValueError.
        allocator: a ``KVCacheAllocator`` / ``PagedKVCache`` whose pages to
            use (its ``write_pages`` fills the requests' pages).
        num_pages, page_size, max_seq_length, dtype, device: the pool's
            settings when no allocator is given (as ``KVCacheAllocator``).
    """

    def __init__(self, config: Any = None, *, allocator: PagedKVCache | None = None,
                 num_pages: int | None = None, page_size: int = 16, max_seq_length: int = 32768,
                 dtype: Any = "float16", device: str | int = "cpu"):
        if allocator is None:
            if config is not None:
                allocator = KVCacheAllocator(config, max_seq_length=max_seq_length, dtype=dtype, device=device,
                                             page_size=page_size, num_pages=num_pages)
            else:
                at_least(page_size, "page_size", 1)
                default = max_seq_length // page_size + 1
                allocator = PagedKVCache(default if num_pages is None else num_pages, page_size)
        else:
            of_type(allocator, "allocator", PagedKVCache, "a KVCacheAllocator or PagedKVCache")
        self.allocator = allocator
        self.config = config if config is not None else allocator.config
        self._core = allocator._core
        self._requests: dict[str, int] = {}

    @property
    def page_size(self) -> int:
        return self.allocator.page_size

    def add_request(self, request_id: str, prompt_tokens: Iterable[int]) -> dict:
        """Adds a request, sharing the cached pages of its prompt's prefix.

        Returns:
            ``{"request_id", "pages" (the block table), "shared_pages" (from
            the prefix cache), "allocated_pages" (new), "cached_tokens"
            (prompt tokens the shared pages hold), "num_tokens"}``.

        Raises ValueError for a duplicate ``request_id`` or an empty prompt,
        ``KVCacheFullError`` (a RuntimeError) when the pool is short (nothing
        is kept).
        """
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already in the cache; remove it first")
        tokens = [int(t) for t in prompt_tokens]
        seq, shared, allocated, cached = self._core.add_sequence(tokens)
        self._requests[request_id] = seq
        return {
            "request_id": request_id,
            "pages": shared + allocated,
            "shared_pages": shared,
            "allocated_pages": allocated,
            "cached_tokens": cached,
            "num_tokens": len(tokens),
        }

    def remove_request(self, request_id: str) -> None:
        """Removes a request and frees its pages (full ones stay cached for
        later prompts). KeyError for an unknown ``request_id``."""
        self._core.remove_sequence(self._seq(request_id))
        del self._requests[request_id]

    def get_pages(self, request_id: str) -> list:
        """The request's block table (page ids in token order)."""
        return self._core.sequence_pages(self._seq(request_id))

    def get_kv_cache(self, request_id: str, cache_type: str = "k", *, layer: int = 0) -> np.ndarray:
        """The request's keys (``'k'``) or values (``'v'``) of ``layer`` in
        token order: float32 ``[num_tokens, num_kv_heads, head_dim]``."""
        return self._core.read_sequence(self._seq(request_id), cache_type, layer)

    def stats(self) -> dict:
        """The pool's counts plus ``requests``, ``prefix_queries`` (full
        pages looked up) and ``prefix_hits`` (found)."""
        queries, hits = self._core.prefix_stats()
        return {**self._core.stats(), "requests": len(self._requests), "prefix_queries": queries,
                "prefix_hits": hits}

    def _seq(self, request_id: str) -> int:
        try:
            return self._requests[request_id]
        except KeyError:
            raise KeyError(f"request_id {request_id!r} is not in the cache; add it with add_request") from None
