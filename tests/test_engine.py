"""The serving engine from Python: ``AsyncEngine`` (threads and asyncio),
``LLM.generate``/``chat`` and the ``PagedKVCache`` allocator view."""

from __future__ import annotations

import asyncio
import queue
import threading

import numpy as np
import pytest

from conftest import MODELS
from ferrolm import LLM, AsyncEngine, PagedKVCache, SamplingConfig, Transformer


def greedy(max_tokens: int, **kw) -> SamplingConfig:
    return SamplingConfig(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                          max_tokens=max_tokens, **kw)


@pytest.fixture(scope="module")
def llm(chat_model):
    with LLM(chat_model, max_seq_len=256) as llm:
        yield llm


def reference_greedy(model_dir, prompt: list[int], n: int) -> list[int]:
    """Greedy continuation from plain ``Transformer.forward`` logits (no engine)."""
    model = Transformer.from_pretrained(model_dir, max_seq_len=256)
    logits = model.forward([prompt])[0, -1]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = model.forward([[out[-1]]], start_pos=len(prompt) + len(out) - 1)[0, -1]
    return out


def test_llm_greedy_equals_the_plain_forward_pass(llm, chat_model):
    prompts = ["Hello there", "The weather today is", "1 2 3"]
    # ignore_eos: no request ends early, so every one is compared token for token.
    outs = llm.generate(prompts, greedy(6, ignore_eos=True))
    assert [o.prompt for o in outs] == prompts
    for o in outs:
        assert o.finish_reason == "length" and len(o.token_ids) == 6
        assert o.token_ids == reference_greedy(chat_model, o.prompt_token_ids, 6)
        assert o.completion_tokens == len(o.token_ids) and o.prompt_tokens == len(o.prompt_token_ids)
        assert o.text == llm.tokenizer.decode(o.token_ids)
    assert llm.stats()["used_pages"] == 0


def test_results_come_back_in_input_order_with_per_prompt_configs(llm):
    prompts = [[5, 6, 7], "a b c", [9] * 40]
    configs = [greedy(1), greedy(7), greedy(3)]
    outs = llm.generate(prompts, configs)
    assert [o.completion_tokens <= c.max_tokens for o, c in zip(outs, configs)] == [True] * 3
    assert outs[0].prompt_token_ids == [5, 6, 7] and outs[2].prompt_token_ids == [9] * 40
    alone = [llm.generate([p], c)[0].token_ids for p, c in zip(prompts, configs)]
    assert [o.token_ids for o in outs] == alone


def test_bad_batch_input_is_a_clear_error(llm):
    with pytest.raises(ValueError, match="2 sampling configs for 3 prompts"):
        llm.generate(["a", "b", "c"], [greedy(1), greedy(1)])
    with pytest.raises(ValueError, match="max_seq_len is 256"):
        llm.generate([[5] * 300], greedy(1))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.generate([[10**7]], greedy(1))
    with pytest.raises(ValueError, match="string or a list of token ids"):
        llm.generate([3.5], greedy(1))
    # The engine keeps serving.
    assert llm.generate("still here", greedy(2))[0].finish_reason in ("stop", "length")


def test_chat_renders_the_template(llm):
    out = llm.chat([{"role": "user", "content": "Hi!"}], greedy(4))[0]
    assert out.prompt.startswith("<|im_start|>") and out.prompt.endswith("<|im_start|>assistant\n")
    assert out.completion_tokens >= 1


def test_sampling_with_a_seed_is_reproducible_and_streams_differ(llm):
    config = SamplingConfig(temperature=1.0, max_tokens=8, seed=3)
    a, b = llm.generate(["x y", "x y"], config)
    again = llm.generate(["x y", "x y"], config)
    assert [a.token_ids, b.token_ids] == [again[0].token_ids, again[1].token_ids]
    assert a.token_ids != b.token_ids, "each prompt of a batch draws from its own stream"


def test_stream_yields_tokens_then_the_end(llm):
    engine = llm.engine
    ids = llm.tokenizer.encode("Once upon")
    outs = list(engine.stream(ids, greedy(5)))
    assert [o.kind for o in outs[:-1]] == ["token"] * (len(outs) - 1)
    assert outs[-1].kind == "finished" and outs[-1].usage[2] == len(outs) - 1


def test_leaving_a_stream_early_aborts_it_and_frees_its_pages(llm):
    engine = llm.engine
    for out in engine.stream([7] * 50, SamplingConfig(temperature=1.0, max_tokens=200, seed=1)):
        assert out.kind == "token"
        break
    stats = wait_idle(engine)
    assert stats["used_pages"] == 0 and stats["running"] == 0


def test_asyncio_streams_run_concurrently(llm):
    engine = llm.engine

    async def main():
        prompts = [[11, 12, 13], [14] * 20, [15, 16]]
        results = await asyncio.gather(*(engine.agenerate(p, greedy(6)) for p in prompts))
        return prompts, results

    prompts, results = asyncio.run(main())
    for p, r in zip(prompts, results):
        assert r.token_ids == llm.generate([p], greedy(6))[0].token_ids
        assert r.finished


def test_a_cancelled_coroutine_aborts_its_request(llm, monkeypatch):
    """Cancelling the coroutine that consumes ``astream`` aborts the request
    in the engine. The engine is held (``pause``) and given exactly one step,
    so the request has exactly one token and cannot finish on its own: the
    end it reports can only come from the abort, on any machine."""
    engine = llm.engine
    seen: list = []  # every output of our request, as the engine sent it (pump thread)
    ended = threading.Event()
    submit_group = engine.submit_group

    def tapped(prompt, sampling, n, listener, **kw):
        def tap(out):
            seen.append(out)
            if out.kind != "token":
                ended.set()
            listener(out)

        return submit_group(prompt, sampling, n, tap, **kw)

    monkeypatch.setattr(engine, "submit_group", tapped)
    config = SamplingConfig(temperature=1.0, max_tokens=200, seed=2, ignore_eos=True)
    got: list = []

    async def main():
        first = asyncio.Event()

        async def consume():
            async for out in engine.astream([8] * 30, config):
                got.append(out)
                first.set()

        added = engine.stats()["requests_added"]
        task = asyncio.create_task(consume())
        while engine.stats()["requests_added"] == added:  # the task's first turn submits it
            assert not task.done()
            await asyncio.sleep(0)
        engine.step(1)  # prefill and the first token; then held again
        await asyncio.wait_for(first.wait(), 60)  # (a hang guard only)
        # No other output can come while the engine is held: the task waits
        # inside astream for the next one, and the cancel lands there.
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    engine.pause()
    try:
        asyncio.run(main())
        assert ended.wait(60), "the aborted request never reported its end"  # (a hang guard only)
        assert [o.kind for o in got] == ["token"]
        assert [o.kind for o in seen] == ["token", "finished"]
        assert seen[-1].finish_reason == "abort" and seen[-1].usage[2] == 1
        stats = engine.stats()
        assert stats["used_pages"] == 0 and stats["running"] == 0 and stats["waiting"] == 0
    finally:
        engine.resume()


def test_a_held_engine_takes_requests_but_runs_nothing(llm):
    engine = llm.engine
    inbox: queue.Queue = queue.Queue()  # filled by the pump thread, a moment after the engine sent it
    engine.pause()
    try:
        generated = engine.stats()["generation_tokens"]
        request_id = engine.submit([5, 6, 7], greedy(10, ignore_eos=True), inbox.put)
        engine.pause()  # still held: nothing ran
        assert engine.stats()["waiting"] == 1 and engine.stats()["generation_tokens"] == generated
        engine.step(3)
        assert engine.stats()["running"] == 1
        engine.step(0)
        with pytest.raises(ValueError, match="non-negative"):
            engine.step(-1)
        engine.abort(request_id)
        outs = [inbox.get(timeout=60) for _ in range(4)]  # (the timeout is a hang guard only)
        wait_idle(engine)
    finally:
        engine.resume()
    # Three steps, three tokens; then the abort, and nothing after it.
    assert [o.kind for o in outs] == ["token"] * 3 + ["finished"]
    assert outs[-1].finish_reason == "abort" and outs[-1].usage[2] == 3 and inbox.empty()
    # Resumed, it runs on; step on a running engine does nothing.
    engine.step(5)
    assert llm.generate([[5, 6, 7]], greedy(4))[0].completion_tokens <= 4


def test_past_max_waiting_submit_is_refused_at_once(chat_model):
    from ferrolm.engine import EngineOverloadedError

    with AsyncEngine(chat_model, max_seq_len=64, max_num_seqs=1, max_waiting=2) as engine:
        inbox: queue.Queue = queue.Queue()
        engine.pause()
        try:
            for _ in range(2):
                engine.submit([5, 6, 7], greedy(2), inbox.put)
            # Held, the engine admits nothing: the third is refused without waiting on it.
            with pytest.raises(EngineOverloadedError, match=r"overloaded.*retry later"):
                engine.submit([5, 6, 7], greedy(2), inbox.put)
            with pytest.raises(RuntimeError):  # an EngineOverloadedError is a RuntimeError
                engine.submit_group([5, 6, 7], greedy(2), 2, inbox.put)
            assert engine.stats()["queued"] == 2
            engine.step(1)  # one slot: the first is admitted, and its place freed
            assert engine.stats()["queued"] == 1
            engine.submit([5, 6, 7], greedy(2), inbox.put)
        finally:
            engine.resume()
        finished = 0
        while finished < 3:  # (the timeout is a hang guard only)
            finished += inbox.get(timeout=60).kind == "finished"
        wait_idle(engine)
        assert engine.stats()["queued"] == 0
    with pytest.raises(ValueError, match="max_waiting must be a positive integer"):
        AsyncEngine(chat_model, max_waiting=0)


def test_prefix_cache_skips_a_shared_prompt(chat_model):
    with AsyncEngine(chat_model, max_seq_len=256) as engine:
        system = list(range(100, 150))  # 50 tokens: 3 full pages
        first = asyncio.run(engine.agenerate([*system, 1, 2], greedy(2)))
        second = asyncio.run(engine.agenerate([*system, 3, 4, 5], greedy(2)))
        assert (first.cached_tokens, second.cached_tokens) == (0, 48)
        assert engine.stats()["cached_prompt_tokens"] == 48


def test_engine_settings_are_checked(chat_model):
    with pytest.raises(ValueError, match="max_num_seqs must be a positive integer"):
        AsyncEngine(chat_model, max_num_seqs=0)
    with pytest.raises(FileNotFoundError):
        AsyncEngine(chat_model / "nope")
    engine = AsyncEngine(chat_model, max_seq_len=64)
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit([1], greedy(1), lambda out: None)


def test_paged_kv_cache_counts_references():
    cache = PagedKVCache(num_pages=4, page_size=16)
    pages = cache.allocate_pages(3)
    assert sorted(pages) == sorted(set(pages)) and len(pages) == 3
    assert cache.allocate_pages(2) is None, "all or nothing"
    cache.add_reference(pages[:1])
    assert cache.ref_count(pages[0]) == 2
    cache.free_pages(pages)
    assert cache.stats() == {"total_pages": 4, "used_pages": 1, "free_pages": 3, "cached_pages": 0,
                             "available_pages": 3, "page_size": 16}
    cache.free_pages(pages[:1])
    assert cache.stats()["used_pages"] == 0
    with pytest.raises(ValueError, match="not allocated"):
        cache.free_pages(pages[:1])
    with pytest.raises(ValueError, match="does not exist"):
        cache.add_reference([99])
    with pytest.raises(ValueError):
        PagedKVCache(num_pages=0)


def wait_idle(engine: AsyncEngine, timeout: float = 10.0) -> dict:
    """Polls until the engine has no running or waiting request (bounded)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        stats = engine.stats()
        if (stats["running"] == 0 and stats["waiting"] == 0) or time.monotonic() > deadline:
            return stats
        time.sleep(0.01)


def test_n_samples_share_one_prompt_and_equal_separate_streams(llm):
    engine = llm.engine
    ids = list(range(200, 240))
    config = SamplingConfig(temperature=1.0, max_tokens=5, seed=9)
    by_index: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for out in engine.stream(ids, config, n=3):
        assert out.kind != "failed"
        if out.kind == "token":
            by_index[out.index].append(out.token)
    for i in range(3):
        alone = [o.token for o in stream_with(engine, ids, config, i) if o.kind == "token"]
        assert by_index[i] == alone, f"sample {i}"
    assert len({tuple(v) for v in by_index.values()}) > 1
    assert wait_idle(engine)["used_pages"] == 0


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("max_tokens", [0, 1])
def test_a_group_done_at_its_prefill_answers_every_sample(llm, max_tokens, n):
    """With nothing or one token to draw, the first sample of a group ends
    at the step that computes its prompt. The group reaches the engine as
    one unit, so that same step forks the prompt to the other samples and
    ends them too: one step answers all of them, the prompt computed once."""
    engine = llm.engine
    inbox: queue.Queue = queue.Queue()  # filled by the pump thread
    prompt = list(range(300, 320))
    engine.pause()
    try:
        before = engine.stats()
        ids = engine.submit_group(prompt, greedy(max_tokens, ignore_eos=True), n, inbox.put)
        engine.step(1)
        stats = engine.stats()
        outs = [inbox.get(timeout=60) for _ in range(n * (max_tokens + 1))]  # (the timeout is a hang guard only)
    finally:
        engine.resume()
    assert (stats["running"], stats["waiting"], stats["used_pages"]) == (0, 0, 0), stats
    ended = {o.request_id: o for o in outs if o.kind == "finished"}
    assert sorted(ended) == sorted(ids)
    assert all(o.finish_reason == "length" and o.usage[2] == max_tokens for o in ended.values())
    assert sorted(o.index for o in ended.values()) == list(range(n))
    assert stats["prompt_tokens"] - before["prompt_tokens"] == len(prompt), "the prompt counts once"
    assert stats["requests_finished"] - before["requests_finished"] == n


def stream_with(engine: AsyncEngine, ids: list[int], config: SamplingConfig, stream: int) -> list:
    import queue

    inbox: queue.Queue = queue.Queue()
    engine.submit(ids, config, inbox.put, stream=stream)
    outs = [inbox.get()]
    while outs[-1].kind == "token":
        outs.append(inbox.get())
    return outs


def test_a_model_without_tokenizer_files_serves_token_ids():
    from conftest import MODELS

    with LLM(MODELS / "llama_f32", max_seq_len=64) as bare:
        assert bare.tokenizer is None
        out = bare.generate([[5, 6, 7]], greedy(4, ignore_eos=True))[0]
        assert (len(out.token_ids), out.finish_reason, out.text) == (4, "length", "")
        with pytest.raises(ValueError, match="no tokenizer"):
            bare.generate("text needs a tokenizer", greedy(1))
    with pytest.raises(ValueError, match="ignore_eos"):
        SamplingConfig(ignore_eos="yes")


@pytest.mark.parametrize("options, pages", [
    (dict(quantize="q8_0"), 10),  # a quantized model keeps an f16 cache: 2 bytes a value
    (dict(quantize="q8_0", kv_dtype="f32"), 5),
    ({}, 5),  # f32 weights, f32 cache: 4 bytes a value
])
def test_kv_cache_bytes_buys_pages_in_the_pools_precision(options, pages):
    # llama_f32: 2 layers x (K, V) x 16 positions x 2 KV heads x head_dim 16 = 2,048 values a page.
    budget = 10 * 2048 * 2
    with AsyncEngine(MODELS / "llama_f32", max_seq_len=256, kv_cache_bytes=budget, **options) as engine:
        assert engine.stats()["total_pages"] == pages
