"""Load: 64 concurrent streaming clients against the real server, and
overload: more clients than a bounded waiting queue (``max_waiting``) takes.

Every request is greedy, so its text is fixed: each one is first run alone
(sequentially, through the same server), then all 64 at once. Under
continuous batching, queueing (``max_num_seqs`` below the client count),
prefix sharing and preemption (a KV pool smaller than the peak demand),
each must come back complete and identical to its lone run, and the engine
must end empty.
"""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import openai
import pytest
from server_helpers import engine_idle, running_server, wait_for

from ferrolm import AsyncEngine
from ferrolm.server import create_app

MODEL = "tiny-chat"
CLIENTS = 64


@pytest.fixture(scope="module")
def served(chat_model):
    # 16 slots for 64 clients: most wait. 20 pages of 16 tokens cannot hold 16
    # running requests of up to ~90 tokens each, so some are preempted (and
    # recomputed later), yet hold the longest request (256 tokens) alone.
    with AsyncEngine(chat_model, max_seq_len=256, max_num_seqs=16, num_pages=20, max_batch_tokens=256) as engine:
        with running_server(create_app(engine, MODEL)) as url:
            yield url, engine


def requests() -> list[dict]:
    rng = random.Random(1234)
    shared = "You are a helpful assistant. Answer the question below in one short paragraph. "
    topics = ["the sea", "mountains", "a red fox", "prime numbers", "rust and python", "the moon", "bread", "rain"]
    out = []
    for i in range(CLIENTS):
        topic = topics[i % len(topics)]
        max_tokens = rng.randint(8, 24)
        if i % 2 == 0:
            # Completions; half of them share a long prefix (prefix-cache hits under load).
            tail = " more" * rng.randint(0, 30)
            prompt = (shared if i % 4 == 0 else "") + f"Question {i}: tell me about {topic}." + tail
            out.append({"kind": "completion", "prompt": prompt, "max_tokens": max_tokens})
        else:
            messages = [{"role": "user", "content": f"Tell me about {topic}, please ({i})."}]
            if i % 3 == 0:
                messages.insert(0, {"role": "system", "content": shared})
            out.append({"kind": "chat", "messages": messages, "max_tokens": max_tokens})
    return out


async def run_one(url: str, http: httpx.AsyncClient, client: openai.AsyncOpenAI, req: dict) -> tuple[str, str, int]:
    """Streams one request; returns (text, finish_reason, completion_tokens)."""
    if req["kind"] == "completion":
        # Raw SSE over httpx.
        body = {"model": MODEL, "prompt": req["prompt"], "max_tokens": req["max_tokens"], "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}
        text, reason, usage, done = "", None, None, False
        async with http.stream("POST", f"{url}/v1/completions", json=body) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: "):]
                if data == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(data)
                if chunk["choices"]:
                    text += chunk["choices"][0]["text"]
                    reason = chunk["choices"][0]["finish_reason"] or reason
                if chunk.get("usage"):
                    usage = chunk["usage"]["completion_tokens"]
        assert done, "the stream ended without [DONE]"
        return text, reason, usage
    # The official client's stream.
    stream = await client.chat.completions.create(model=MODEL, messages=req["messages"], max_tokens=req["max_tokens"],
                                                  temperature=0, stream=True, stream_options={"include_usage": True})
    text, reason, usage = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            reason = chunk.choices[0].finish_reason or reason
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
    return text, reason, usage


async def run_all(url: str, reqs: list[dict], engine: AsyncEngine | None = None) -> list[tuple[str, str, int]]:
    """Runs ``reqs`` one after another, or, given the engine, all at once:
    the engine is held until every request has reached it, so they really
    overlap (queue, share prefixes, preempt) however fast the machine is."""
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http, \
            openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120,
                               http_client=httpx.AsyncClient(timeout=120, limits=limits)) as client:
        if engine is None:
            return [await run_one(url, http, client, r) for r in reqs]
        engine.pause()
        try:
            together = asyncio.gather(*(run_one(url, http, client, r) for r in reqs))
            deadline = time.monotonic() + 60  # a hang guard only
            while engine.stats()["waiting"] < len(reqs):
                assert not together.done() and time.monotonic() < deadline, "the requests never all arrived"
                await asyncio.sleep(0.01)
        finally:
            engine.resume()
        return list(await together)


def test_64_concurrent_streams_match_their_lone_runs(served):
    url, engine = served
    reqs = requests()
    t0 = time.monotonic()
    alone = asyncio.run(run_all(url, reqs))
    t1 = time.monotonic()
    before = engine.stats()
    together = asyncio.run(run_all(url, reqs, engine))
    t2 = time.monotonic()
    after = engine.stats()

    assert len(together) == len(alone) == CLIENTS
    for i, (req, a, b) in enumerate(zip(reqs, alone, together)):
        assert a[1] in ("stop", "length") and a[2] >= 1, (i, a)
        assert a[2] <= req["max_tokens"]
        assert b == a, f"request {i} ({req['kind']}, max_tokens {req['max_tokens']}) differs under load"
    wait_for(lambda: engine_idle(engine), 30, "the engine to drain")
    final = engine.stats()
    assert final["used_pages"] == 0 and final["running"] == 0 and final["waiting"] == 0
    assert after["requests_finished"] - before["requests_finished"] == CLIENTS
    # The load overlapped (all 64 were queued at once): requests shared prefixes and ran out of pages.
    assert final["prefix_hits"] > before["prefix_hits"]
    assert after["preemptions"] > before["preemptions"]
    print(f"\nalone: {t1 - t0:.1f}s, 64 concurrent: {t2 - t1:.1f}s, "
          f"preemptions under load: {after['preemptions'] - before['preemptions']}")


# -- overload: a bounded waiting queue ----------------------------------------------------


async def overload_call(http: httpx.AsyncClient, url: str, i: int) -> tuple[int, dict, str | None]:
    """One request (streams and plain ones, completions and chat, alternately):
    (status, the JSON body or the stream's last chunk, Retry-After)."""
    chat = i % 2 == 1
    body = {"model": MODEL, "max_tokens": 12 + i % 13, "temperature": 0, "stream": i % 4 < 2}
    if chat:
        body["messages"] = [{"role": "user", "content": f"Tell me about the number {i}."}]
    else:
        body["prompt"] = f"Question {i}: tell me about the sea." + " more" * (i % 20)
    path = "/v1/chat/completions" if chat else "/v1/completions"
    async with http.stream("POST", f"{url}{path}", json=body) as r:
        if not body["stream"] or r.status_code != 200:
            return r.status_code, json.loads(await r.aread()), r.headers.get("retry-after")
        events = [line[len("data: "):] async for line in r.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", events
    last = json.loads(events[-2])
    assert "error" not in last, last
    return r.status_code, last, None


def assert_refused(status: int, body: dict, retry_after: str | None) -> None:
    assert status == 429, body
    assert retry_after is not None and int(retry_after) >= 1
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "engine_overloaded"
    assert "overloaded" in body["error"]["message"] and "retry" in body["error"]["message"]


def assert_completed(status: int, body: dict) -> None:
    assert status == 200, body
    assert body["choices"][-1]["finish_reason"] in ("stop", "length"), body


def test_past_max_waiting_requests_get_429_at_once_and_nothing_leaks(chat_model):
    # 2 slots and 6 pages of 16 tokens for many clients: most wait, and the
    # running ones preempt each other; at most 3 may wait.
    with AsyncEngine(chat_model, max_seq_len=256, max_num_seqs=2, num_pages=6, max_batch_tokens=64,
                     max_waiting=3) as engine, running_server(create_app(engine, MODEL)) as url:

        async def scenario() -> None:
            limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
            async with httpx.AsyncClient(timeout=120, limits=limits) as http:
                # Held, the engine admits nothing: exactly 3 of 8 are taken,
                # and the other 5 are answered while it is held (at once,
                # not after a wait on the engine).
                engine.pause()
                try:
                    pending = {asyncio.ensure_future(overload_call(http, url, i)) for i in range(8)}
                    refused = []
                    while len(refused) < 5:
                        done, pending = await asyncio.wait(pending, timeout=60, return_when=asyncio.FIRST_COMPLETED)
                        assert done, "a refusal never came"  # a hang guard only
                        refused += [t.result() for t in done]
                    for status, body, retry_after in refused:
                        assert_refused(status, body, retry_after)
                    assert len(pending) == 3 and engine.stats()["queued"] == 3
                finally:
                    engine.resume()
                for status, body, _ in await asyncio.gather(*pending):
                    assert_completed(status, body)

                # Running free: each of 24 clients is either served in full or refused at once.
                results = await asyncio.gather(*(overload_call(http, url, i) for i in range(24)))
                for status, body, retry_after in results:
                    if status == 429:
                        assert_refused(status, body, retry_after)
                    else:
                        assert_completed(status, body)
                assert any(status == 200 for status, _, _ in results)

        asyncio.run(scenario())
        wait_for(lambda: engine_idle(engine), 30, "the engine to drain")
        stats = engine.stats()
        assert stats["used_pages"] == 0 and stats["queued"] == 0, stats
        assert stats["requests_added"] == stats["requests_finished"]
