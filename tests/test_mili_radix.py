"""MILI's ``RadixAttentionCache`` (its API reference's "Paged KV Cache API") over the
engine's prefix cache: repeated prompts share their full prefix pages (by
page id), removed requests leave them cached, and each request's keys and
values read back in token order."""

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from ferrolm import AsyncEngine, SamplingConfig
from ferrolm.mili.kv_cache import KVCacheAllocator
from ferrolm.mili.radix import RadixAttentionCache

config = SimpleNamespace(num_hidden_layers=4, num_key_value_heads=2, head_dim=8)
PROMPT = list(range(100, 140))  # 40 tokens: two full pages of 16 and 8 more


def test_the_mili_calls_share_a_repeated_prefix():
    cache = RadixAttentionCache(config)

    first = cache.add_request("req-1", PROMPT)
    assert first["shared_pages"] == [] and first["cached_tokens"] == 0
    assert len(first["allocated_pages"]) == 3 and first["pages"] == first["allocated_pages"]
    assert first["request_id"] == "req-1" and first["num_tokens"] == 40

    again = cache.add_request("req-2", PROMPT)
    assert again["shared_pages"] == first["pages"][:2]
    assert again["cached_tokens"] == 32
    assert len(again["allocated_pages"]) == 1 and again["allocated_pages"][0] not in first["pages"]
    assert again["pages"] == again["shared_pages"] + again["allocated_pages"] == cache.get_pages("req-2")

    stats = cache.stats()
    assert (stats["requests"], stats["used_pages"], stats["prefix_hits"]) == (2, 4, 2)


def test_only_the_common_full_pages_are_shared():
    cache = RadixAttentionCache(num_pages=16)
    first = cache.add_request("a", PROMPT)
    other = cache.add_request("b", [7, *PROMPT[1:]])
    assert other["shared_pages"] == [] and other["cached_tokens"] == 0
    # The same first page, then different tokens: one page shared.
    branch = cache.add_request("c", PROMPT[:16] + [9] * 24)
    assert branch["shared_pages"] == first["pages"][:1] and branch["cached_tokens"] == 16
    # A prompt ending on a page boundary keeps its last token to compute.
    short = cache.add_request("d", PROMPT[:32])
    assert short["shared_pages"] == first["pages"][:1] and short["cached_tokens"] == 16


def test_cached_tokens_are_what_the_engine_reuses(chat_model):
    system = list(range(100, 150))  # 50 tokens: 3 full pages
    prompts = [[*system, 1, 2], [*system, 3, 4, 5], [*system[:20], 9], [7, *system]]
    cache = RadixAttentionCache(num_pages=64)
    ours = [cache.add_request(str(i), p)["cached_tokens"] for i, p in enumerate(prompts)]
    greedy = SamplingConfig(temperature=0.0, max_tokens=1)
    with AsyncEngine(chat_model, max_seq_len=256) as engine:
        theirs = [asyncio.run(engine.agenerate(p, greedy)).cached_tokens for p in prompts]
    assert ours == theirs == [0, 48, 16, 0]


def test_removed_requests_leave_full_pages_cached_for_later_prompts():
    cache = RadixAttentionCache(config, num_pages=8)
    first = cache.add_request("req-1", PROMPT)
    cache.add_request("req-2", PROMPT)
    cache.remove_request("req-1")
    cache.remove_request("req-2")
    stats = cache.stats()
    assert (stats["used_pages"], stats["cached_pages"], stats["requests"]) == (0, 2, 0)

    later = cache.add_request("req-3", PROMPT)
    assert later["shared_pages"] == first["pages"][:2] and later["cached_tokens"] == 32
    with pytest.raises(KeyError, match="req-1"):
        cache.remove_request("req-1")


def test_get_kv_cache_reads_what_write_pages_wrote_in_token_order():
    allocator = KVCacheAllocator(config, dtype="float32", num_pages=8)
    cache = RadixAttentionCache(allocator=allocator)
    first = cache.add_request("req-1", PROMPT)
    rng = np.random.default_rng(5)
    keys = rng.standard_normal((40, 2, 8)).astype(np.float32)
    values = rng.standard_normal((40, 2, 8)).astype(np.float32)
    allocator.write_pages(first["pages"], keys, cache_type="k", layer=2)
    allocator.write_pages(first["pages"], values, cache_type="v", layer=2)
    np.testing.assert_array_equal(cache.get_kv_cache("req-1", "k", layer=2), keys)
    np.testing.assert_array_equal(cache.get_kv_cache("req-1", "v", layer=2), values)

    # A request sharing the prefix reads the first request's keys there.
    again = cache.add_request("req-2", PROMPT)
    got = cache.get_kv_cache("req-2", "k", layer=2)
    assert got.shape == (40, 2, 8)
    np.testing.assert_array_equal(got[:32], keys[:32])
    np.testing.assert_array_equal(got[32:], np.zeros((8, 2, 8)), "its own last page is not written yet")
    assert allocator.stats()["used_pages"] == 4, "one pool under both views"
    assert again["allocated_pages"][0] not in first["pages"]


def test_bad_requests_and_exhaustion_change_nothing():
    cache = RadixAttentionCache(config, num_pages=3)
    cache.add_request("a", PROMPT)
    with pytest.raises(ValueError, match="'a' is already"):
        cache.add_request("a", [1, 2])
    with pytest.raises(ValueError, match="prompt_tokens is empty"):
        cache.add_request("b", [])
    with pytest.raises(ValueError, match="token id -1"):
        cache.add_request("b", [-1])
    before = cache.stats()
    with pytest.raises(RuntimeError, match="Insufficient pages in KV cache"):
        cache.add_request("b", PROMPT)  # shares two pages, needs one more than the pool has
    after = cache.stats()
    assert after["used_pages"] == before["used_pages"] and after["requests"] == 1
    with pytest.raises(KeyError, match="'b' is not in the cache"):
        cache.get_kv_cache("b")
    with pytest.raises(ValueError, match="cache_type `x`"):
        cache.get_kv_cache("a", cache_type="x")
    bookkeeping = RadixAttentionCache(num_pages=4)
    bookkeeping.add_request("a", [1, 2, 3])
    with pytest.raises(ValueError, match="with a config"):
        bookkeeping.get_kv_cache("a")
