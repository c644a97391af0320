"""Serving benchmark: throughput and latency of concurrent requests through
ferrolm's continuous-batching engine, against the same requests run one by
one through the same engine.

For each concurrency level (default 1, 8, 32, 64) the same set of requests
is sent with at most that many in flight; the script prints generated
tokens/s, time to first token (TTFT) and inter-token latency (ITL) p50/p99,
and the throughput ratio against concurrency 1 (one request at a time).

    python benchmarks/serve_bench.py                       # SmolLM2, 32 requests
    python benchmarks/serve_bench.py --requests 64 --max-tokens 32 --json out.json

Prefix caching is off by default so later levels do not reuse the pages of
earlier ones (``--prefix-caching`` turns it on).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field

from ferrolm import AsyncEngine, SamplingConfig

TOPICS = [
    "the history of the printing press", "how rainbows form", "why cats purr", "the rules of chess",
    "a recipe for bread", "the water cycle", "how vaccines work", "the life of a honeybee",
    "what black holes are", "how to learn a language", "the causes of the seasons", "how bridges stand up",
]


@dataclass
class Sample:
    ttft: float = 0.0
    itl: list[float] = field(default_factory=list)
    tokens: int = 0


def prompts(n: int) -> list[str]:
    """Mixed lengths: short questions and longer instructions."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        if i % 3 == 0:
            out.append(f"Write a detailed explanation of {topic}, covering its background, the main ideas, "
                       f"common misconceptions and a short summary for a curious student (request {i}).")
        else:
            out.append(f"Tell me about {topic} (request {i}).")
    return out


async def one(engine: AsyncEngine, ids: list[int], sampling: SamplingConfig, sem: asyncio.Semaphore) -> Sample:
    async with sem:
        s = Sample()
        start = last = time.perf_counter()
        async for out in engine.astream(ids, sampling):
            if out.kind == "failed":
                raise out.error
            if out.kind != "token":
                break
            now = time.perf_counter()
            if s.tokens == 0:
                s.ttft = now - start
            else:
                s.itl.append(now - last)
            last = now
            s.tokens += 1
        return s


async def level(engine: AsyncEngine, requests: list[list[int]], sampling: SamplingConfig,
                concurrency: int) -> dict:
    sem = asyncio.Semaphore(concurrency)
    start = time.perf_counter()
    samples = await asyncio.gather(*(one(engine, ids, sampling, sem) for ids in requests))
    wall = time.perf_counter() - start
    tokens = sum(s.tokens for s in samples)
    ttft = sorted(s.ttft for s in samples)
    itl = sorted(x for s in samples for x in s.itl)
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "generated_tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "ttft_p50_ms": 1e3 * pct(ttft, 50), "ttft_p99_ms": 1e3 * pct(ttft, 99),
        "itl_p50_ms": 1e3 * pct(itl, 50), "itl_p99_ms": 1e3 * pct(itl, 99),
    }


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, int(p) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="directory, .gguf or short name (default: smollm2)")
    ap.add_argument("--requests", type=int, default=32, help="requests per level (default: 32)")
    ap.add_argument("--max-tokens", type=int, default=24, help="new tokens per request (default: 24)")
    ap.add_argument("--concurrency", default="1,8,32,64", help="levels, comma-separated (default: 1,8,32,64)")
    ap.add_argument("--max-seq-len", type=int, default=1024)
    ap.add_argument("--max-batch-tokens", type=int, default=512)
    ap.add_argument("--prefix-caching", action="store_true", help="share prompt pages between requests")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    engine = AsyncEngine(args.model, max_seq_len=args.max_seq_len, max_num_seqs=max(levels),
                         max_batch_tokens=args.max_batch_tokens, prefix_caching=args.prefix_caching)
    tok = engine.tokenizer
    requests = [tok.encode(tok.apply_chat_template([{"role": "user", "content": p}], True), add_special_tokens=False)
                for p in prompts(args.requests)]
    # Greedy; a request may still end early at an end-of-sequence token (only real tokens are counted).
    sampling = SamplingConfig(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                              max_tokens=args.max_tokens)
    engine.submit([1], sampling, lambda out: None)  # warm-up: first-touch allocations
    time.sleep(0.5)

    print(f"model {engine.model_path} | {args.requests} requests x {args.max_tokens} tokens | "
          f"prompts {min(map(len, requests))}-{max(map(len, requests))} tokens | "
          f"{os.cpu_count()} CPUs, {platform.machine()} | {time.strftime('%Y-%m-%d')}")
    results = []
    for c in levels:
        r = asyncio.run(level(engine, requests, sampling, c))
        results.append(r)
        base = results[0]["tokens_per_s"] if results[0]["concurrency"] == 1 else float("nan")
        print(f"concurrency {c:>3}: {r['tokens_per_s']:7.1f} tok/s ({r['tokens_per_s'] / base:5.2f}x one-by-one) | "
              f"TTFT p50 {r['ttft_p50_ms']:7.0f} ms p99 {r['ttft_p99_ms']:7.0f} ms | "
              f"ITL p50 {r['itl_p50_ms']:6.0f} ms p99 {r['itl_p99_ms']:6.0f} ms | wall {r['wall_s']:.1f} s",
              flush=True)
    stats = engine.stats()
    print(f"after: {stats['used_pages']} KV pages in use, {stats['preemptions']} preemptions")
    engine.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": engine.model_path, "levels": results, "stats": stats}, f, indent=2)


if __name__ == "__main__":
    main()
