"""The KV page counts mean the same in every stats dict and on ``/metrics``:
``used_pages`` (held by requests or references), ``cached_pages`` (held only
by the prefix cache: reclaimable), ``free_pages`` (on the free list, holding
nothing) and ``available_pages`` (free + cached: what new requests can take).
Checked with cached pages present, where the meanings part."""

import asyncio
import re

from ferrolm import AsyncEngine, SamplingConfig
from ferrolm.mili import ContinuousBatchScheduler
from ferrolm.mili.radix import RadixAttentionCache
from ferrolm.server.metrics import Metrics

PROMPT = list(range(100, 140))  # 40 tokens: two full pages of 16 and 8 more


def check_counts(stats: dict) -> None:
    assert stats["cached_pages"] > 0, stats
    assert stats["used_pages"] + stats["cached_pages"] + stats["free_pages"] == stats["total_pages"], stats
    assert stats["available_pages"] == stats["free_pages"] + stats["cached_pages"], stats


def test_paged_kv_cache_counts_cached_pages_apart_from_free_ones():
    cache = RadixAttentionCache(num_pages=8)
    cache.add_request("a", PROMPT)
    cache.remove_request("a")
    stats = cache.stats()
    check_counts(stats)
    assert (stats["used_pages"], stats["cached_pages"], stats["free_pages"], stats["available_pages"]) == (0, 2, 6, 8)


def test_scheduler_counts_as_the_pool_does():
    scheduler = ContinuousBatchScheduler(page_size=4, max_seq_length=64, num_pages=8)
    scheduler.add_request(list(range(1, 10)), max_tokens=1)  # two full pages and one token
    while True:
        batch, _ = scheduler.get_next_batch()
        if not batch:
            break
        for item in batch:
            if item.wants_token:
                scheduler.update_request(item.request_id, 5)
    stats = scheduler.stats()
    check_counts(stats)
    assert (stats["used_pages"], stats["cached_pages"], stats["free_pages"], stats["available_pages"]) == (0, 2, 6, 8)


def _gauge(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert m, f"{name} is not in /metrics"
    return float(m.group(1))


def test_engine_stats_and_metrics_count_as_the_pool_does(chat_model):
    greedy = SamplingConfig(temperature=0.0, max_tokens=1)
    with AsyncEngine(chat_model, max_seq_len=256, num_pages=32) as engine:
        asyncio.run(engine.agenerate(PROMPT, greedy))
        stats = engine.stats()
        check_counts(stats)
        assert (stats["used_pages"], stats["cached_pages"], stats["available_pages"]) == (0, 2, 32)
        text = Metrics(engine, "m").render().decode()
    assert _gauge(text, "ferrolm_kv_pages_total") == stats["total_pages"]
    assert _gauge(text, "ferrolm_kv_pages_used") == stats["used_pages"]
    assert _gauge(text, "ferrolm_kv_pages_cached") == stats["cached_pages"]
    assert _gauge(text, "ferrolm_kv_pages_free") == stats["free_pages"]
    assert _gauge(text, "ferrolm_kv_pages_available") == stats["available_pages"] == 32
