"""ferrolm.mili.scheduler: MILI's ContinuousBatchScheduler over the engine's
scheduler. MILI's example runs as written; a fake model that keeps its
"keys" (the tokens themselves) in pages, read back through each item's block
table, must give what a plain per-request loop gives, with chunked prefill,
prefix sharing and preemption in play."""

import numpy as np
import pytest

from ferrolm.mili.scheduler import ContinuousBatchScheduler, RequestMetadata, RequestPhase

EOS = 96


def test_the_mili_example_runs_as_written():
    scheduler = ContinuousBatchScheduler(max_batch_size=64)

    # Add request
    req_id = scheduler.add_request(prompt_tokens=[1, 2, 3], max_tokens=100, temperature=0.7)

    # Get batch
    batch, batch_type = scheduler.get_next_batch()

    # Update with generated token
    scheduler.update_request(req_id, new_token=5)

    # Check status
    status = scheduler.get_request_status(req_id)

    assert batch_type == "prefill"
    [item] = batch
    assert isinstance(item, RequestMetadata)
    assert (item.request_id, item.prompt_tokens, item.max_tokens) == (req_id, [1, 2, 3], 100)
    assert (item.temperature, item.top_p, item.top_k) == (0.7, 0.95, 50)
    assert (item.phase, item.input_tokens, item.start_pos, item.wants_token) == (
        RequestPhase.PREFILL,
        [1, 2, 3],
        0,
        True,
    )
    assert (item.seq_length, item.generated_tokens, len(item.kv_cache_pages)) == (3, [], 1)
    assert status == {
        "status": "processing",
        "phase": "DECODE",
        "tokens_generated": 1,
        "tokens_remaining": 99,
        "waiting": False,
    }

    batch, batch_type = scheduler.get_next_batch()
    assert batch_type == "decode"
    assert [(m.phase, m.input_tokens, m.start_pos, m.generated_tokens) for m in batch] == [
        (RequestPhase.DECODE, [5], 3, [5])
    ]


class FakeModel:
    """Writes each item's tokens into its pages; its next token is the sum
    of every position read back through the block table, mod 97."""

    def __init__(self, num_pages: int, page_size: int):
        self.kv = np.full((num_pages, page_size), -1, dtype=np.int64)
        self.page_size = page_size

    def slot(self, pages, pos):
        return pages[pos // self.page_size], pos % self.page_size

    def run(self, item: RequestMetadata):
        for i, t in enumerate(item.input_tokens):
            self.kv[self.slot(item.kv_cache_pages, item.start_pos + i)] = t
        if not item.wants_token:
            return None
        end = item.start_pos + len(item.input_tokens)
        return int(sum(self.kv[self.slot(item.kv_cache_pages, p)] for p in range(end)) % 97)


def reference(prompt, max_tokens, stop=()):
    """The same rule, one request at a time."""
    seq, out = list(prompt), []
    while len(out) < max_tokens:
        t = sum(seq) % 97
        if t == EOS or t in stop:
            return out, "stop"
        seq.append(t)
        out.append(t)
    return out, "length"


PROMPTS = [list(range(1, 12)), [5, 6, 7], list(range(20, 30)), [3] * 9, [40, 41, 42], list(range(1, 12))]


def drive(scheduler, model, limits):
    """Runs every batch until none is left; checks each against the limits."""
    batches = []
    while True:
        batch, batch_type = scheduler.get_next_batch()
        if not batch:
            return batches
        assert sum(len(m.input_tokens) for m in batch) <= limits["max_batch_tokens"]
        assert len(batch) <= limits["max_batch_size"]
        assert batch_type == ("prefill" if any(m.phase is RequestPhase.PREFILL for m in batch) else "decode")
        for m in batch:
            assert len(m.kv_cache_pages) == -(-(m.start_pos + len(m.input_tokens)) // model.page_size)
            token = model.run(m)
            if token is not None:
                scheduler.update_request(m.request_id, token, kv_cache_page=m.kv_cache_pages[-1])
        batches.append(batch)


def test_request_metadata_is_complete_as_mili_defines_it():
    # MILI: complete once max_tokens tokens are generated.
    meta = RequestMetadata(request_id="r", prompt_tokens=[1, 2], max_tokens=2)
    assert not meta.is_complete()
    meta.generated_tokens.append(5)
    assert not meta.is_complete() and meta.tokens_remaining() == 1
    meta.generated_tokens.append(6)
    assert meta.is_complete() and meta.tokens_remaining() == 0

    # MILI's loop keeps the batch items that are not complete: here every one,
    # since the scheduler hands out only requests still due tokens.
    scheduler = ContinuousBatchScheduler(max_batch_size=4)
    req_id = scheduler.add_request([1, 2, 3], max_tokens=2)
    while True:
        batch, _ = scheduler.get_next_batch()
        if not batch:
            break
        for item in batch:
            assert not item.is_complete()
            scheduler.update_request(item.request_id, 5)
    assert scheduler.get_completed_result(req_id)["generated_tokens"] == [5, 5]


@pytest.mark.parametrize(
    "limits",
    [
        dict(max_batch_size=64, page_size=16, num_pages=None, max_batch_tokens=2048),
        # Short pages, a short pool and a small budget: prompts are chunked
        # and requests are preempted and recomputed.
        dict(max_batch_size=8, page_size=4, num_pages=8, max_batch_tokens=5),
    ],
    ids=["roomy", "chunked-and-preempted"],
)
def test_a_full_loop_equals_the_per_request_loop(limits):
    scheduler = ContinuousBatchScheduler(max_seq_length=64, eos_token_ids=[EOS], **limits)
    model = FakeModel(scheduler.num_pages, limits["page_size"])
    max_tokens = [6, 9, 4, 12, 7, 6]
    stops = [(), (), (), (30,), (), ()]
    ids = [
        scheduler.add_request(p, max_tokens=n, stop_token_ids=list(s)) for p, n, s in zip(PROMPTS, max_tokens, stops)
    ]
    batches = drive(scheduler, model, limits)
    for rid, prompt, n, stop in zip(ids, PROMPTS, max_tokens, stops):
        want, reason = reference(prompt, n, stop)
        result = scheduler.get_completed_result(rid)
        assert result["generated_tokens"] == want
        assert result["finish_reason"] == reason
        assert result["total_tokens"] == len(prompt) + len(want)
    stats = scheduler.stats()
    assert stats["used_pages"] == 0 and stats["running"] == stats["waiting"] == 0
    if limits["num_pages"] is not None:
        assert stats["preemptions"] > 0
        assert any(m.phase is RequestPhase.PREFILL and not m.wants_token for b in batches for m in b)


def test_a_repeated_prompt_starts_after_its_cached_pages():
    scheduler = ContinuousBatchScheduler(page_size=4, max_seq_length=64)
    model = FakeModel(scheduler.num_pages, 4)
    prompt = list(range(1, 10))  # two full pages and one token
    first = scheduler.add_request(prompt, max_tokens=3)
    first_pages = drive(scheduler, model, dict(max_batch_tokens=2048, max_batch_size=64))[0][0].kv_cache_pages
    second = scheduler.add_request(prompt, max_tokens=3)
    [item], _ = scheduler.get_next_batch()
    assert (item.start_pos, item.input_tokens, item.kv_cache_pages[:2]) == (8, [9], first_pages[:2])
    scheduler.update_request(second, model.run(item))
    drive(scheduler, model, dict(max_batch_tokens=2048, max_batch_size=64))
    assert (
        scheduler.get_completed_result(second)["generated_tokens"]
        == scheduler.get_completed_result(first)["generated_tokens"]
        == reference(prompt, 3)[0]
    )


def test_batch_sizes_follow_prefill_and_decode_limits():
    scheduler = ContinuousBatchScheduler(max_batch_size=4, prefill_batch_size=2, decode_batch_size=3)
    ids = [scheduler.add_request([t], max_tokens=5) for t in range(1, 6)]
    sizes = []
    for _ in range(3):
        batch, _ = scheduler.get_next_batch()
        sizes.append([m.request_id for m in batch])
        for m in batch:
            scheduler.update_request(m.request_id, 7)
    # Two admissions per batch, at most three running at once (min of 4 and 3).
    assert sizes == [ids[:2], ids[:3], ids[:3]]
    assert scheduler.get_request_status(ids[3])["waiting"] is True


def test_status_moves_from_waiting_to_completed_to_not_found():
    scheduler = ContinuousBatchScheduler(page_size=4, max_batch_tokens=2, eos_token_ids=[EOS])
    rid = scheduler.add_request([1, 2, 3], max_tokens=2)
    seen = [scheduler.get_request_status(rid)]
    scheduler.get_next_batch()  # positions 0..2: no token due yet
    seen.append(scheduler.get_request_status(rid))
    scheduler.get_next_batch()  # position 2: a token is due
    scheduler.update_request(rid, 5)
    seen.append(scheduler.get_request_status(rid))
    assert scheduler.get_completed_result(rid) is None
    scheduler.get_next_batch()
    scheduler.update_request(rid, 6)
    seen.append(scheduler.get_request_status(rid))
    processing = dict(status="processing", tokens_generated=0, tokens_remaining=2)
    assert seen == [
        dict(processing, phase="PREFILL", waiting=True),
        dict(processing, phase="PREFILL", waiting=False),
        dict(processing, phase="DECODE", waiting=False, tokens_generated=1, tokens_remaining=1),
        {"status": "completed", "tokens_generated": 2, "finish_reason": "length"},
    ]
    result = scheduler.get_completed_result(rid)
    assert result["generated_tokens"] == [5, 6] and result["total_tokens"] == 5
    assert result["generation_time"] > 0
    assert scheduler.get_completed_result(rid) == result, "a kept result does not change"
    assert scheduler.pop_completed_result(rid) == result
    assert scheduler.get_request_status(rid) == {"status": "not_found"}
    assert scheduler.get_completed_result(rid) is None


def test_eos_and_stop_tokens_end_a_request_without_being_kept():
    scheduler = ContinuousBatchScheduler(eos_token_ids=[EOS])
    a = scheduler.add_request([1], max_tokens=5)
    b = scheduler.add_request([2], max_tokens=5, stop_token_ids=[7])
    scheduler.get_next_batch()
    scheduler.update_request(a, EOS)
    scheduler.update_request(b, 7)
    for rid in (a, b):
        assert scheduler.get_completed_result(rid)["generated_tokens"] == []
        assert scheduler.get_completed_result(rid)["finish_reason"] == "stop"
    assert scheduler.get_next_batch() == ([], "decode")
    assert scheduler.stats()["used_pages"] == 0


def test_abort_frees_the_request_at_once():
    scheduler = ContinuousBatchScheduler()
    rid = scheduler.add_request([1, 2, 3], max_tokens=5)
    scheduler.get_next_batch()
    assert scheduler.stats()["used_pages"] == 1
    assert scheduler.abort_request(rid) is True
    assert scheduler.stats()["used_pages"] == 0
    assert scheduler.get_completed_result(rid)["finish_reason"] == "abort"
    assert scheduler.abort_request(rid) is False
    assert scheduler.get_next_batch() == ([], "decode")


def test_bad_input_raises_naming_the_argument():
    scheduler = ContinuousBatchScheduler(max_seq_length=256)
    with pytest.raises(TypeError, match="beam_width"):
        scheduler.add_request([1], beam_width=4)
    with pytest.raises(ValueError, match="prompt_tokens is empty"):
        scheduler.add_request([])
    with pytest.raises(ValueError, match=r"prompt_tokens\[1\]"):
        scheduler.add_request([1, -2])
    with pytest.raises(ValueError, match="max_tokens"):
        scheduler.add_request([1], max_tokens=0)
    with pytest.raises(ValueError, match="max_seq_len=256"):
        scheduler.add_request([1] * 250, max_tokens=10)
    with pytest.raises(ValueError, match="top_p"):
        scheduler.add_request([1], top_p=2.0)
    with pytest.raises(ValueError, match="temperature"):
        scheduler.add_request([1], temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        scheduler.add_request([1], top_k=-1)
    with pytest.raises(ValueError, match="max_batch_size"):
        ContinuousBatchScheduler(max_batch_size=0)

    with pytest.raises(KeyError, match="unknown request_id 'nope'"):
        scheduler.update_request("nope", 1)
    rid = scheduler.add_request([1, 2], max_tokens=3)
    with pytest.raises(ValueError, match="not due a token"):
        scheduler.update_request(rid, 1)
    [item], _ = scheduler.get_next_batch()
    with pytest.raises(ValueError, match="still owes"):
        scheduler.get_next_batch()
    with pytest.raises(ValueError, match="new_token"):
        scheduler.update_request(rid, -1)
    with pytest.raises(ValueError, match="kv_cache_page=999"):
        scheduler.update_request(rid, 1, kv_cache_page=999)
    scheduler.update_request(rid, 1, kv_cache_page=item.kv_cache_pages[0])
    assert scheduler.get_request_status(rid)["tokens_generated"] == 1


def test_the_module_docstring_example_holds():
    import doctest

    import ferrolm.mili.scheduler as module

    assert doctest.testmod(module).failed == 0
