"""MILI's ``KVCacheAllocator`` and ``PagedKVCache`` (its API reference's "KV
Cache Management" and "Paged KV Cache API") over the engine's Rust page pool:
MILI's example as written, round trips against the storage precision, block
tables, reference counts and exhaustion."""

from types import SimpleNamespace

import numpy as np
import pytest

from ferrolm import _core
from ferrolm.kv import KVCacheFullError, PagedKVCache
from ferrolm.mili.kv_cache import KVCacheAllocator

# Qwen3-0.6B's KV geometry (ferrolm.mili.Qwen3Config carries these fields).
config = SimpleNamespace(num_hidden_layers=28, num_key_value_heads=8, head_dim=128)
SHAPE = (config.num_key_value_heads, config.head_dim)


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *SHAPE)).astype(np.float32)


def as_f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def test_the_mili_example_runs_as_written():
    k_tensor = rows(16)

    allocator = KVCacheAllocator(config, max_batch_size=64)

    # Allocate pages
    page_ids = allocator.allocate_page()  # Returns single page_id

    # Write data
    allocator.write_pages([page_ids], k_tensor, cache_type='k')

    # Read data
    k_cache = allocator.gather_pages([page_ids], seq_len=16, cache_type='k')

    assert isinstance(page_ids, int)
    assert k_cache.shape == (16, *SHAPE) and k_cache.dtype == np.float32
    # float16 storage (MILI's default dtype) keeps each value rounded to f16.
    np.testing.assert_array_equal(k_cache, as_f16(k_tensor))
    assert not np.array_equal(k_cache, k_tensor)
    np.testing.assert_array_equal(allocator.get_page(page_ids, cache_type='k'), k_cache)
    np.testing.assert_array_equal(allocator.get_page(page_ids, cache_type='v'), np.zeros((16, *SHAPE)))


def test_the_mili_attributes_and_default_pool_size():
    allocator = KVCacheAllocator(config)
    assert (allocator.page_size, allocator.max_batch_size, allocator.max_seq_length) == (16, 64, 32768)
    assert (allocator.dtype, allocator.device, allocator.config) == ("float16", "cpu", config)
    assert allocator.num_pages == 32768 // 16 + 1
    assert allocator.stats()["total_pages"] == 2049
    assert KVCacheAllocator(config, dtype=np.float32).dtype == "float32"
    assert KVCacheAllocator(config, dtype="torch.float32").dtype == "float32"
    with pytest.raises(ValueError, match="dtype `int8` is not known"):
        KVCacheAllocator(config, dtype="int8")
    with pytest.raises(ValueError, match="num_key_value_heads"):
        KVCacheAllocator(SimpleNamespace(num_hidden_layers=2))


def test_float32_pages_round_trip_exactly_on_every_layer_and_kind():
    allocator = KVCacheAllocator(config, dtype="float32", max_seq_length=64)
    page = allocator.allocate_page()
    k, v = rows(16, 1), rows(16, 2)
    allocator.write_pages([page], k, cache_type="k", layer=27)
    allocator.write_pages([page], v, cache_type="v", layer=27)
    np.testing.assert_array_equal(allocator.get_page(page, "k", layer=27), k)
    np.testing.assert_array_equal(allocator.get_page(page, "v", layer=27), v)
    np.testing.assert_array_equal(allocator.get_page(page, "k", layer=0), np.zeros((16, *SHAPE)))


def test_gather_follows_the_block_table_across_pages():
    allocator = KVCacheAllocator(config, dtype="float32", max_seq_length=64)
    pages = [allocator.allocate_page() for _ in range(3)]
    table = [pages[2], pages[0], pages[1]]
    data = rows(40, 3)  # two full pages and half of a third
    allocator.write_pages(table, data, cache_type="v", layer=3)
    np.testing.assert_array_equal(allocator.gather_pages(table, 40, "v", layer=3), data)
    np.testing.assert_array_equal(allocator.gather_pages(table, 20, "v", layer=3), data[:20])
    # Position p is offset p % 16 of table[p // 16].
    np.testing.assert_array_equal(allocator.get_page(pages[0], "v", layer=3), data[16:32])
    np.testing.assert_array_equal(allocator.get_page(pages[1], "v", layer=3)[:8], data[32:])
    assert allocator.gather_pages(table, 0, "v").shape == (0, *SHAPE)


def test_page_references_share_and_free():
    allocator = KVCacheAllocator(config, max_seq_length=64)
    page = allocator.allocate_page()
    allocator.add_page_reference(page)
    assert allocator.ref_count(page) == 2
    allocator.free_page(page)
    assert allocator.ref_count(page) == 1 and allocator.stats()["used_pages"] == 1
    allocator.free_page(page)
    assert allocator.stats()["used_pages"] == 0
    with pytest.raises(ValueError, match=f"page {page} is not allocated"):
        allocator.free_page(page)


def test_exhaustion_raises_runtime_error_and_leaks_nothing():
    allocator = KVCacheAllocator(config, max_seq_length=32)  # 32 // 16 + 1 = 3 pages
    pages = [allocator.allocate_page() for _ in range(3)]
    assert sorted(pages) == [0, 1, 2]
    with pytest.raises(RuntimeError, match="Insufficient pages in KV cache"):
        allocator.allocate_page()
    with pytest.raises(KVCacheFullError):
        allocator.allocate_page()
    # Also a ValueError, as the engine's callers (the server's 400) expect of a short pool.
    assert issubclass(KVCacheFullError, RuntimeError) and issubclass(KVCacheFullError, ValueError)
    assert allocator.allocate_pages(1) is None, "MILI's PagedKVCache returns None instead"
    assert allocator.stats()["used_pages"] == 3
    allocator.free_page(pages[1])
    assert allocator.allocate_page() == pages[1]


def test_bad_arguments_name_what_is_wrong():
    allocator = KVCacheAllocator(config, max_seq_length=64)
    page = allocator.allocate_page()
    with pytest.raises(ValueError, match="cache_type `q`"):
        allocator.get_page(page, cache_type="q")
    with pytest.raises(ValueError, match="layer 28 is out of range"):
        allocator.get_page(page, layer=28)
    with pytest.raises(ValueError, match="layer -1 is out of range"):
        allocator.get_page(page, layer=-1)
    with pytest.raises(ValueError, match="page 99 does not exist"):
        allocator.get_page(99)
    with pytest.raises(ValueError, match="page -1 does not exist"):
        allocator.gather_pages([-1], 1)
    with pytest.raises(ValueError, match=f"page {page + 1} is not allocated"):
        allocator.gather_pages([page + 1], 1)
    with pytest.raises(ValueError, match="seq_len covers 17 positions"):
        allocator.gather_pages([page], seq_len=17)
    with pytest.raises(ValueError, match="tensor `data` has shape \\[16, 4, 128\\]"):
        allocator.write_pages([page], np.zeros((16, 4, 128)))
    with pytest.raises(ValueError, match="data covers 17 positions"):
        allocator.write_pages([page], rows(17))
    np.testing.assert_array_equal(allocator.get_page(page), np.zeros((16, *SHAPE)), "nothing was written")


def test_paged_kv_cache_is_the_same_core_with_or_without_storage():
    bookkeeping = PagedKVCache(num_pages=8)
    assert type(bookkeeping._core) is type(KVCacheAllocator(config)._core) is _core.PagedKVCache
    pages = bookkeeping.allocate_pages(3)
    bookkeeping.add_reference(pages[:1])
    bookkeeping.free_pages(pages)
    assert bookkeeping.stats()["used_pages"] == 1
    with pytest.raises(ValueError, match="with a config"):
        bookkeeping.get_page(pages[0])

    stored = PagedKVCache(4, page_size=8, config=config, dtype="float32")
    table = stored.allocate_pages(2)
    data = rows(12, 4)
    stored.write_pages(table, data, "k")
    np.testing.assert_array_equal(stored.gather_pages(table, 12, "k"), data)
    np.testing.assert_array_equal(stored.get_page(table[1])[:4], data[8:])
    assert stored.allocate_pages(3) is None and stored.stats()["used_pages"] == 2
