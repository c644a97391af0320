"""Prometheus metrics for ``GET /metrics``.

Each app gets its own ``CollectorRegistry`` (not prometheus_client's global
one), so several servers in one process (tests, embedding) neither clash on
metric names nor mix their numbers. Engine-wide numbers (queue lengths, KV
pages, token counts) are read from ``engine.stats()`` at scrape time rather
than mirrored, so they can never drift; latencies and finish reasons are
measured here, per request, as clients see them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds; CPU decoding of real models spans milliseconds to seconds per token.
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _EngineCollector(Collector):
    """Reads ``engine.stats()`` on each scrape."""

    def __init__(self, engine: Any, model: str) -> None:
        self._engine = engine
        self._model = model

    def collect(self) -> Iterator[Metric]:
        s = self._engine.stats()
        labels = ["model"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric([self._model], value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=labels)
            c.add_metric([self._model], value)
            return c

        yield gauge("ferrolm_requests_running", "Requests being decoded.", s["running"])
        yield gauge("ferrolm_requests_waiting", "Requests queued for a slot or KV pages.", s["waiting"])
        yield gauge("ferrolm_kv_pages_total", "KV cache pages in the pool.", s["total_pages"])
        yield gauge("ferrolm_kv_pages_used", "KV cache pages held by live requests.", s["used_pages"])
        yield gauge("ferrolm_kv_pages_cached", "KV cache pages held only by the prefix cache (reclaimable).",
                    s["cached_pages"])
        yield gauge("ferrolm_kv_pages_free", "KV cache pages on the free list, holding nothing.", s["free_pages"])
        yield gauge("ferrolm_kv_pages_available", "KV cache pages new requests can take (free + cached).",
                    s["available_pages"])
        yield gauge("ferrolm_kv_page_size_tokens", "Tokens per KV page.", s["page_size"])
        queries = s["prefix_queries"]
        yield gauge("ferrolm_prefix_cache_hit_rate", "Prefix-cache page lookups that hit (hits / queries).",
                    s["prefix_hits"] / queries if queries else 0.0)
        yield counter("ferrolm_prefix_cache_queries", "Prefix-cache page lookups.", queries)
        yield counter("ferrolm_prefix_cache_hits", "Prefix-cache page lookups that hit.", s["prefix_hits"])
        yield counter("ferrolm_prompt_tokens", "Prompt tokens received.", s["prompt_tokens"])
        yield counter("ferrolm_cached_prompt_tokens", "Prompt tokens served from the prefix cache.",
                      s["cached_prompt_tokens"])
        yield counter("ferrolm_generation_tokens", "Tokens generated.", s["generation_tokens"])
        yield counter("ferrolm_engine_requests_added", "Requests submitted to the engine.", s["requests_added"])
        yield counter("ferrolm_engine_requests_finished", "Requests the engine finished.",
                      s["requests_finished"])
        yield counter("ferrolm_preemptions", "Requests preempted for KV pages (recomputed later).",
                      s["preemptions"])


class Metrics:
    """The app's registry and the metrics the server measures itself."""

    def __init__(self, engine: Any, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_EngineCollector(engine, model))
        self.ttft = Histogram("ferrolm_time_to_first_token_seconds",
                              "From the HTTP request's arrival to its first generated token.",
                              ["model"], buckets=_TTFT_BUCKETS, registry=self.registry).labels(model)
        self.itl = Histogram("ferrolm_inter_token_latency_seconds",
                             "Between consecutive generated tokens of one request.",
                             ["model"], buckets=_ITL_BUCKETS, registry=self.registry).labels(model)
        self._finished = Counter("ferrolm_requests_finished",
                                 "Engine requests by finish reason (stop, length, abort, error).",
                                 ["model", "finish_reason"], registry=self.registry)
        self._http = Counter("ferrolm_http_requests", "Generation requests by endpoint.",
                             ["model", "endpoint"], registry=self.registry)

    def finished(self, reason: str) -> None:
        self._finished.labels(self.model, reason).inc()

    def request(self, endpoint: str) -> None:
        self._http.labels(self.model, endpoint).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
