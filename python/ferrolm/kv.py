"""``PagedKVCache``: the seed's view of the paged KV allocator (bookkeeping
only: page ids and reference counts), a thin binding over the Rust pool the
engine uses.

>>> cache = PagedKVCache(num_pages=8)
>>> pages = cache.allocate_pages(3)
>>> cache.add_reference(pages[:1]); cache.free_pages(pages)
>>> cache.stats()["used_pages"]
1
"""

from ferrolm._core import PagedKVCache

__all__ = ["PagedKVCache"]
