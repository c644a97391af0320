"""The OpenAI-compatible server, for real: uvicorn on a loopback port, spoken to
with the official ``openai`` client and with ``httpx``."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading

import httpx
import openai
import pytest
from server_helpers import Served, engine_idle, running_server, sse_events, wait_for

from ferrolm import AsyncEngine, SamplingConfig
from ferrolm.server import create_app

MODEL = "tiny-chat"
MAX_SEQ_LEN = 1024


@pytest.fixture(scope="module")
def engine(chat_model):
    with AsyncEngine(chat_model, max_seq_len=MAX_SEQ_LEN) as engine:
        yield engine


@pytest.fixture(scope="module")
def server(engine):
    with running_server(create_app(engine, MODEL)) as url:
        served = Served(url, engine)
        yield served
        served.http.close()


def greedy(max_tokens: int, **kw) -> SamplingConfig:
    """The engine-side twin of an OpenAI request with temperature 0."""
    return SamplingConfig(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                          max_tokens=max_tokens, **kw)


def engine_text(engine: AsyncEngine, ids: list[int], config: SamplingConfig) -> tuple[str, str]:
    """(text, finish_reason) of one request run directly on the engine."""
    outs = list(engine.stream(ids, config))
    return "".join(o.text for o in outs), outs[-1].finish_reason


def chat_ids(engine: AsyncEngine, messages) -> list[int]:
    text = engine.tokenizer.apply_chat_template(messages, True)
    return engine.tokenizer.encode(text, add_special_tokens=False)


HELLO = [{"role": "user", "content": "Hello! Who are you?"}]


def assert_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# -- models and plain requests -------------------------------------------------------


def test_models_lists_the_served_model(server):
    models = server.client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert server.client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        server.client.models.retrieve("other-model")


def test_completion_matches_the_engine(server):
    out = server.client.completions.create(model=MODEL, prompt="Hello there", max_tokens=8, temperature=0)
    ids = server.engine.tokenizer.encode("Hello there")
    text, reason = engine_text(server.engine, ids, greedy(8))
    assert out.object == "text_completion" and out.model == MODEL and out.id.startswith("cmpl-")
    assert len(out.choices) == 1 and out.choices[0].index == 0
    assert out.choices[0].text == text and out.choices[0].finish_reason == reason == "length"
    assert out.usage.prompt_tokens == len(ids)
    assert out.usage.completion_tokens == 8
    assert out.usage.total_tokens == len(ids) + 8


def test_completion_defaults_to_16_tokens_and_accepts_token_ids(server):
    ids = server.engine.tokenizer.encode("The weather today is")
    by_text = server.client.completions.create(model=MODEL, prompt="The weather today is", temperature=0)
    by_ids = server.client.completions.create(model=MODEL, prompt=ids, temperature=0)
    one_in_a_list = server.client.completions.create(model=MODEL, prompt=[ids], temperature=0)
    assert by_text.usage.completion_tokens == 16  # OpenAI's default max_tokens
    assert by_text.choices[0].text == by_ids.choices[0].text == one_in_a_list.choices[0].text


def test_completion_of_several_prompts(server):
    prompts = ["one two", "three four five"]
    out = server.client.completions.create(model=MODEL, prompt=prompts, max_tokens=4, temperature=0)
    assert [c.index for c in out.choices] == [0, 1]
    for prompt, choice in zip(prompts, out.choices):
        alone = server.client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, temperature=0)
        assert choice.text == alone.choices[0].text
    assert out.usage.prompt_tokens == sum(len(server.engine.tokenizer.encode(p)) for p in prompts)


def test_chat_renders_the_template_and_matches_the_engine(server):
    out = server.client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10, temperature=0)
    ids = chat_ids(server.engine, HELLO)
    text, reason = engine_text(server.engine, ids, greedy(10))
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == text
    assert out.choices[0].finish_reason == reason
    assert out.usage.prompt_tokens == len(ids)


def test_chat_max_completion_tokens_and_the_default_runs_to_the_end(server):
    short = server.client.chat.completions.create(model=MODEL, messages=HELLO, max_completion_tokens=3,
                                                  temperature=0)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    # No limit given: until the model stops or the context is full (OpenAI's chat default).
    full = server.client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0)
    ids = chat_ids(server.engine, HELLO)
    text, reason = engine_text(server.engine, ids, greedy(MAX_SEQ_LEN))
    assert full.choices[0].message.content == text and full.choices[0].finish_reason == reason
    assert full.usage.completion_tokens > 16
    assert full.usage.prompt_tokens + full.usage.completion_tokens <= MAX_SEQ_LEN


def test_chat_accepts_text_content_parts_and_the_developer_role(server):
    plain = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    parts = [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
             {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]
    a = server.client.chat.completions.create(model=MODEL, messages=plain, max_tokens=6, temperature=0)
    b = server.client.chat.completions.create(model=MODEL, messages=parts, max_tokens=6, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


# -- streaming -------------------------------------------------------------------------


def test_completion_stream_equals_the_plain_response(server):
    kw = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}
    plain = server.client.completions.create(**kw)
    chunks = list(server.client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [plain.choices[0].finish_reason]
    assert all(c.id == chunks[0].id for c in chunks)
    # include_usage: one last chunk without choices carrying the usage.
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens


def test_chat_stream_equals_the_plain_response(server):
    kw = {"model": MODEL, "messages": HELLO, "max_tokens": 12, "temperature": 0}
    plain = server.client.chat.completions.create(**kw)
    chunks = list(server.client.chat.completions.create(**kw, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == plain.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk


def test_raw_stream_is_server_sent_events_ending_in_done(server):
    body = {"model": MODEL, "prompt": "abc", "max_tokens": 3, "temperature": 0, "stream": True}
    with server.http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    frames = raw.split("\n\n")
    assert frames[-1] == "" and frames[-2] == "data: [DONE]"
    for frame in frames[:-2]:
        assert frame.startswith("data: ")
        assert json.loads(frame[len("data: "):])["object"] == "text_completion"


# -- n, seeds, stop strings, logprobs, usage ----------------------------------------


def test_n_choices_with_a_seed_are_reproducible_and_differ(server):
    kw = {"model": MODEL, "prompt": "Tell me a story", "max_tokens": 10, "temperature": 1.0, "seed": 7}
    a = server.client.completions.create(**kw, n=3)
    b = server.client.completions.create(**kw, n=3)
    assert [c.index for c in a.choices] == [0, 1, 2]
    texts = [c.text for c in a.choices]
    assert texts == [c.text for c in b.choices]
    assert len(set(texts)) > 1  # each choice has its own random stream
    if all(c.finish_reason == "length" for c in a.choices):
        assert a.usage.completion_tokens == 3 * 10
    assert a.usage.prompt_tokens == len(server.engine.tokenizer.encode("Tell me a story"))  # counted once
    single = server.client.completions.create(**kw)
    assert single.choices[0].text == texts[0]
    # OpenAI allows any integer seed; negative ones work and repeat too.
    neg = [server.client.completions.create(**{**kw, "seed": -5}).choices[0].text for _ in range(2)]
    assert neg[0] == neg[1]


def test_n_choices_stream_interleaved(server):
    kw = {"model": MODEL, "messages": HELLO, "max_tokens": 6, "temperature": 0.8, "seed": 3, "n": 2}
    plain = server.client.chat.completions.create(**kw)
    texts = {0: "", 1: ""}
    finished = set()
    for chunk in server.client.chat.completions.create(**kw, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1}
    assert [texts[0], texts[1]] == [c.message.content for c in plain.choices]


def test_stop_strings_end_the_text_before_them(server):
    kw = {"model": MODEL, "prompt": "Hello there", "temperature": 0, "max_tokens": 20}
    full = server.client.completions.create(**kw).choices[0].text
    stop = full[8:11]
    assert len(stop) == 3 and stop.strip()
    cut = full[: full.index(stop)]
    for given in (stop, [stop, "never-appears-xyz"]):
        out = server.client.completions.create(**kw, stop=given).choices[0]
        assert out.finish_reason == "stop"
        assert stop not in out.text and out.text == cut
    chunks = list(server.client.completions.create(**kw, stop=stop, stream=True))
    streamed = "".join(c.choices[0].text for c in chunks)
    assert streamed == cut and chunks[-1].choices[0].finish_reason == "stop"


def test_completion_logprobs(server):
    out = server.client.completions.create(model=MODEL, prompt="Hello there", max_tokens=6, temperature=0,
                                           logprobs=3)
    choice = out.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert "".join(lp.tokens) == choice.text
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0.0 and 1 <= len(top) <= 3
        # Greedy: the chosen token is the most likely one.
        assert top[token] == pytest.approx(logprob) and max(top.values()) == pytest.approx(logprob)
    streamed = list(server.client.completions.create(model=MODEL, prompt="Hello there", max_tokens=6,
                                                     temperature=0, logprobs=3, stream=True))
    tokens = [t for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == lp.tokens


def test_chat_logprobs(server):
    out = server.client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, temperature=0,
                                                logprobs=True, top_logprobs=2)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens == 5
    assert "".join(t.token for t in content) == out.choices[0].message.content
    for t in content:
        assert t.bytes == list(t.token.encode("utf-8"))
        assert t.logprob <= 0.0 and len(t.top_logprobs) == 2
        assert t.top_logprobs[0].token == t.token and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
    plain = server.client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, temperature=0)
    assert plain.choices[0].logprobs is None


def test_usage_reports_cached_prompt_tokens(server):
    prompt = "A long shared preamble that fills more than one page of the KV cache, " * 3
    ids = server.engine.tokenizer.encode(prompt)
    page = server.engine.stats()["page_size"]
    assert len(ids) > 2 * page
    server.client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0)
    again = server.client.completions.create(model=MODEL, prompt=prompt, max_tokens=1, temperature=0)
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert again.usage.prompt_tokens == len(ids)
    assert page <= cached < len(ids) and cached % page == 0


def test_penalties_and_extra_sampling_fields_are_honoured(server):
    kw = {"model": MODEL, "prompt": "la la la la", "max_tokens": 16, "temperature": 0}
    base = server.client.completions.create(**kw).choices[0].text
    penalized = server.client.completions.create(**kw, frequency_penalty=2.0, presence_penalty=2.0).choices[0].text
    extra = server.client.completions.create(**kw, extra_body={"repetition_penalty": 3.0}).choices[0].text
    assert penalized != base and extra != base
    # top_k=1 is greedy whatever the temperature.
    sampled = server.client.completions.create(**{**kw, "temperature": 1.5}, extra_body={"top_k": 1}, seed=1)
    assert sampled.choices[0].text == base


# -- MILI's endpoints, and /status ---------------------------------------------------


def test_generate_status_and_unknown_ids(server):
    r = server.http.post("/generate", json={"prompt": "Hello there", "max_tokens": 7, "temperature": 0.0})
    assert r.status_code == 200, r.text
    body = r.json()
    ids = server.engine.tokenizer.encode("Hello there")
    assert body["prompt_tokens"] == len(ids)
    assert len(body["tokens"]) == 7 and body["total_tokens"] == len(ids) + 7
    assert body["generated_text"] == server.engine.tokenizer.decode(body["tokens"])
    status = server.http.get(f"/status/{body['request_id']}").json()
    assert status["status"] == "completed"
    assert status["tokens_generated"] == 7 and status["tokens_remaining"] == 0
    assert server.http.get("/status/no-such-request").json()["status"] == "not_found"


def test_generate_stream(server):
    body = {"prompt": "Hello there", "max_tokens": 5, "temperature": 0.0, "stream": True}
    with server.http.stream("POST", "/generate", json=body) as r:
        assert r.status_code == 200
        events = list(sse_events(r.iter_lines()))
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert [p["finished"] for p in parsed] == [False] * 5 + [True]
    final = parsed[-1]
    assert "".join(p["text"] for p in parsed) == final["generated_text"]
    assert [p["token"] for p in parsed[:-1]] == final["tokens"]
    plain = server.http.post("/generate", json={**body, "stream": False}).json()
    assert plain["generated_text"] == final["generated_text"]


def test_health_and_root(server):
    health = server.http.get("/health").json()
    assert health["status"] == "healthy" and health["model_loaded"] and health["scheduler_ready"]
    assert health["max_seq_length"] == MAX_SEQ_LEN
    assert health["vocab_size"] == 49152 and health["model_type"] == "LlamaForCausalLM"
    root = server.http.get("/").json()
    assert root["endpoints"]["chat"] == "POST /v1/chat/completions" and "generate" in root["endpoints"]


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$"
    for m in re.finditer(pattern, text, re.MULTILINE):
        if all(part in m.group(1).split(",") for part in labels.split(",") if part):
            return float(m.group(2))
    raise AssertionError(f"metric {name}{{{labels}}} not found")


def test_metrics(server):
    server.client.completions.create(model=MODEL, prompt="count me", max_tokens=3, temperature=0)
    r = server.http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    stats = server.engine.stats()
    assert _metric(text, "ferrolm_kv_pages_total") == stats["total_pages"]
    assert _metric(text, "ferrolm_kv_pages_used") == 0
    assert _metric(text, "ferrolm_requests_running") == 0 and _metric(text, "ferrolm_requests_waiting") == 0
    assert _metric(text, "ferrolm_generation_tokens_total") >= 3
    assert _metric(text, "ferrolm_prompt_tokens_total") >= 2
    assert 0.0 <= _metric(text, "ferrolm_prefix_cache_hit_rate") <= 1.0
    assert _metric(text, "ferrolm_requests_finished_total", 'finish_reason="length"') >= 1
    assert _metric(text, "ferrolm_time_to_first_token_seconds_count") >= 1
    assert _metric(text, "ferrolm_inter_token_latency_seconds_count") >= 2
    assert _metric(text, "ferrolm_time_to_first_token_seconds_bucket", 'le="+Inf"') >= 1


# -- bad input ---------------------------------------------------------------------------

TOO_LONG = [5] * (MAX_SEQ_LEN + 10)
CHAT = [{"role": "user", "content": "hi"}]
BAD_REQUESTS = [
    ("/v1/completions", {"prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "hi", "n": 0}, 400, "n"),
    ("/v1/completions", {"prompt": "hi", "model": "gpt-4"}, 404, "model"),
    ("/v1/completions", {"prompt": TOO_LONG}, 400, "prompt"),
    ("/v1/completions", {"prompt": TOO_LONG, "stream": True}, 400, "prompt"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, 400, "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 2}, 400, "top_p"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 50}, 400, "logprobs"),
    ("/v1/completions", {"prompt": [10**7]}, 400, None),
    ("/v1/completions", {"prompt": {"not": "a prompt"}}, 400, "prompt"),
    ("/v1/completions", {}, 400, "prompt"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 2}, 400, "top_logprobs"),
    ("/v1/chat/completions", {"messages": CHAT, "n": -2, "stream": True}, 400, "n"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x " * 2000}], "stream": True}, 400,
     "prompt"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages"),
    ("/generate", {"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ("/generate", {"prompt": "hi", "max_tokens": -5}, 400, "max_tokens"),
    # Each of these was a 500 (UnicodeEncodeError, OverflowError, TypeError).
    ("/v1/completions", {"prompt": "a\ud800b"}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["ok", "a\udfffb"]}, 400, "prompt"),
    ("/generate", {"prompt": "a\ud800b"}, 400, "prompt"),
    ("/v1/completions", {"prompt": [2**64]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [[1, 2], [-1]]}, 400, "prompt"),
    ("/v1/chat/completions", {"messages": CHAT, "chat_template_kwargs": {"tools": 5}}, 400, "messages"),
    ("/v1/chat/completions", {"messages": CHAT, "chat_template_kwargs": {"add_generation_prompt": "yes"}}, 400,
     "chat_template_kwargs"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD_REQUESTS,
                         ids=[f"{p}-{'-'.join(map(str, b))}" for p, b, _, _ in BAD_REQUESTS])
def test_bad_input_is_an_openai_error_and_the_server_keeps_serving(server, path, body, status, param):
    # json.dumps escapes non-ASCII, so lone surrogates travel as JSON writes them (`\ud800`).
    sent = server.http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})
    err = assert_error(sent, status)
    assert err["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    if param is not None:
        assert err["param"] == param
    out = server.client.completions.create(model=MODEL, prompt="still there?", max_tokens=2, temperature=0)
    assert out.usage.completion_tokens == 2
    assert engine_idle(server.engine)


UNIMPLEMENTED = [
    ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "functions"),
    ("/v1/chat/completions", {"function_call": "auto"}, "function_call"),
    ("/v1/chat/completions", {"response_format": {"type": "grammar"}}, "response_format"),
    ("/v1/completions", {"echo": True}, "echo"),
    ("/v1/completions", {"suffix": "tail"}, "suffix"),
]


@pytest.mark.parametrize(("path", "extra", "param"), UNIMPLEMENTED, ids=[p for _, _, p in UNIMPLEMENTED])
def test_fields_that_would_change_the_answer_are_refused_not_ignored(server, path, extra, param):
    body = {"messages": CHAT} if "chat" in path else {"prompt": "hi"}
    err = assert_error(server.http.post(path, json={**body, **extra, "max_tokens": 1}), 400)
    assert err["param"] == param and "not supported" in err["message"]


def test_fields_that_ask_for_nothing_pass(server):
    out = server.client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=1, temperature=0,
                                                response_format={"type": "text"}, tool_choice="none",
                                                tools=[], user="someone", metadata={"k": "v"})
    assert out.usage.completion_tokens == 1


def test_chat_template_kwargs_merge_with_the_request_as_vllm_does(server):
    """add_generation_prompt may be set through chat_template_kwargs; the
    request's own messages win over a `messages` key there (both were 500s)."""
    plain = server.http.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 3, "temperature": 0})
    assert plain.status_code == 200, plain.text
    ignored = server.http.post("/v1/chat/completions", json={
        "messages": CHAT, "max_tokens": 3, "temperature": 0, "chat_template_kwargs": {"messages": []}})
    assert ignored.status_code == 200, ignored.text
    assert ignored.json()["choices"][0]["message"] == plain.json()["choices"][0]["message"]
    no_header = server.http.post("/v1/chat/completions", json={
        "messages": CHAT, "max_tokens": 3, "temperature": 0, "chat_template_kwargs": {"add_generation_prompt": False}})
    assert no_header.status_code == 200, no_header.text
    assert no_header.json()["usage"]["prompt_tokens"] < plain.json()["usage"]["prompt_tokens"]
    assert engine_idle(server.engine)


def test_malformed_json_and_unknown_routes(server):
    assert_error(server.http.post("/v1/completions", content=b"{not json",
                                  headers={"content-type": "application/json"}), 400)
    assert_error(server.http.get("/v1/nothing-here"), 404)


def test_openai_client_raises_typed_errors(server):
    with pytest.raises(openai.BadRequestError, match="max_seq_len"):
        server.client.completions.create(model=MODEL, prompt=TOO_LONG, max_tokens=1)
    with pytest.raises(openai.NotFoundError):
        server.client.chat.completions.create(model="gpt-4o", messages=CHAT)


def test_a_model_without_a_chat_template_is_a_clear_400(chat_model, tmp_path):
    plain = tmp_path / "no-template"
    plain.mkdir()
    for f in chat_model.iterdir():
        if f.name != "chat_template.jinja":
            (plain / f.name).symlink_to(f)
    with AsyncEngine(plain, max_seq_len=64) as engine:
        assert engine.tokenizer.chat_template is None
        with running_server(create_app(engine, "plain")) as url:
            r = httpx.post(f"{url}/v1/chat/completions", json={"messages": CHAT}, timeout=30)
            assert "no chat template" in assert_error(r, 400)["message"]
            ok = httpx.post(f"{url}/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=30)
            assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


# -- disconnects ----------------------------------------------------------------------


def test_a_client_that_leaves_mid_stream_frees_its_pages(server):
    # The engine is held (pause) and given one step: the request has one
    # token and cannot end on its own, so the end it reports comes from the
    # disconnect, however fast the machine.
    engine = server.engine
    body = {"model": MODEL, "messages": HELLO, "stream": True, "temperature": 0, "max_tokens": MAX_SEQ_LEN,
            "stop_token_ids": []}
    engine.pause()
    try:
        added = engine.stats()["requests_added"]
        with httpx.Client(base_url=server.url, timeout=30) as http, \
                http.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            assert engine.stats()["requests_added"] == added + 1, "submitted before the response starts"
            engine.step(1)
            events = sse_events(r.iter_lines())  # kept: dropping it would close the response here
            first = json.loads(next(events))
            status = http.get(f"/status/{first['id']}").json()
            assert status["status"] == "processing" and status["tokens_remaining"] > 0
        # The connection is closed: the server must abort the request.
        wait_for(lambda: engine_idle(engine), 30, "the aborted request's pages to be freed")
        wait_for(lambda: server.http.get(f"/status/{first['id']}").json()["status"] == "completed", 10,
                 "the record")
    finally:
        engine.resume()
    status = server.http.get(f"/status/{first['id']}").json()
    assert status["finish_reason"] == "abort"
    assert status["tokens_generated"] <= 1


def test_a_client_that_leaves_a_plain_request_aborts_it(server):
    def aborted() -> float:
        text = server.http.get("/metrics").text
        try:
            return _metric(text, "ferrolm_requests_finished_total", 'finish_reason="abort"')
        except AssertionError:
            return 0.0

    # Held, the engine cannot answer: the client's read timeout is certain
    # to expire, whatever the machine's speed, and the server must abort.
    engine = server.engine
    before = aborted()
    body = {"model": MODEL, "prompt": "x", "temperature": 0, "max_tokens": MAX_SEQ_LEN, "stop_token_ids": []}
    engine.pause()
    try:
        generated = engine.stats()["generation_tokens"]
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/completions", json=body, timeout=httpx.Timeout(30, read=0.3))
        wait_for(lambda: aborted() > before, 30, "the abandoned request to be aborted")
        wait_for(lambda: engine_idle(engine), 30, "the aborted request's pages to be freed")
        assert engine.stats()["generation_tokens"] == generated, "held: nothing ran before the abort"
    finally:
        engine.resume()


# -- API key ------------------------------------------------------------------------------


def test_api_key(engine):
    with running_server(create_app(engine, MODEL, api_key="s3cret")) as url:
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
        err = assert_error(httpx.post(f"{url}/v1/completions", json=body), 401)
        assert err["type"] == "authentication_error"
        assert_error(httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": "Bearer nope"}), 401)
        assert_error(httpx.get(f"{url}/v1/models"), 401)
        assert_error(httpx.post(f"{url}/generate", json={"prompt": "hi"}), 401)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert client.completions.create(**body).usage.completion_tokens == 2
        # Probes stay open (see ferrolm/server/auth.py).
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 200


# -- the command ----------------------------------------------------------------------------


def test_serve_help():
    out = subprocess.run([sys.executable, "-m", "ferrolm.cli", "serve", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0
    for flag in ("--host", "--port", "--api-key", "--served-model-name", "--max-seq-len", "--max-num-seqs",
                 "--max-batch-tokens", "--num-pages", "--no-prefix-caching", "--max-waiting", "--shutdown-timeout",
                 "ferrolm[server]"):
        assert flag in out.stdout


def test_ferrolm_serve_runs_a_server(chat_model, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "FERROLM_API_KEY": "k"}
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ferrolm.cli", "serve", str(chat_model), "--port", str(port),
                                 "--max-seq-len", "128", "--served-model-name", "tiny"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 60, "ferrolm serve to answer", interval=0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        assert client.models.retrieve("tiny").max_model_len == 128
        assert f"at http://127.0.0.1:{port}/v1 (API key required)" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_default_served_name_drops_gguf():
    from ferrolm.server.launch import default_model_name

    assert default_model_name("/models/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1"
    assert default_model_name("/models/my-model/") == "my-model"
    assert default_model_name("smollm2") == "smollm2"


def test_serve_without_the_extra_says_what_to_install(tmp_path):
    # A fastapi that cannot be imported stands in for the missing extra.
    (tmp_path / "fastapi").mkdir()
    (tmp_path / "fastapi" / "__init__.py").write_text("raise ImportError('no fastapi', name='fastapi')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "ferrolm.cli", "serve", "smollm2"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 1
    assert "pip install 'ferrolm[server]'" in out.stderr
    ok = subprocess.run([sys.executable, "-m", "ferrolm.cli", "--help"], capture_output=True, text=True,
                        timeout=60, env=env)
    assert ok.returncode == 0



# -- request size and the event loop -----------------------------------------------------

def test_a_body_over_the_cap_is_a_413_before_it_is_read(engine):
    app = create_app(engine, MODEL, max_request_bytes=1000)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        big = {"prompt": "x " * 1000, "max_tokens": 1}
        err = assert_error(http.post("/v1/completions", json=big), 413)
        assert "max-request-bytes" in err["message"]

        def chunks():  # no Content-Length: counted as it streams in
            yield b'{"prompt": "'
            for _ in range(100):
                yield b"x " * 50
            yield b'"}'

        assert_error(http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"}),
                     413)
        ok = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
        assert ok.status_code == 200, ok.text
    assert engine_idle(engine)


def test_prompts_are_tokenized_off_the_event_loop(engine, monkeypatch):
    """A large prompt's tokenization must not hold up /health: it runs in a
    worker thread, not on the event loop's (the thread uvicorn runs in here)."""
    app = create_app(engine, MODEL)
    tokenizer = app.state.ferrolm.tokenizer
    threads = []
    encode = tokenizer.encode

    def recording(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return encode(*args, **kwargs)

    monkeypatch.setattr(tokenizer, "encode", recording)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        for path, body in [("/v1/completions", {"prompt": "hi", "max_tokens": 1}),
                           ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 1}),
                           ("/generate", {"prompt": "hi", "max_tokens": 1})]:
            assert http.post(path, json=body).status_code == 200, path
    assert len(threads) == 3 and "uvicorn-test" not in threads, threads
