"""Property tests of the HTTP API: whatever body a client sends to a POST
route, the answer is never a 5xx and never a hang, and the server is
healthy and idle after.

Bodies come from ``hypothesis``: each route's own fields with values of
the right type at their edges (huge and negative numbers, NaN, empty and
odd strings, lone surrogates), one field of any JSON value or left out,
unknown fields, bodies that are not objects and bytes that are not JSON. Derandomized with
a bounded number of examples, so CI runs the same cases every time. Every
5xx found was a bug: its body is kept below as an explicit ``@example``.
"""

from __future__ import annotations

import json
import math

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from server_helpers import engine_idle, running_server, wait_for

from ferrolm import AsyncEngine
from ferrolm.server import create_app

MODEL = "tiny-chat"
TIMEOUT = 30  # per request: a hang guard

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def served(chat_model):
    # A short context (still room for the chat template's system prompt)
    # bounds the work any accepted request can ask for.
    with AsyncEngine(chat_model, max_seq_len=96, num_pages=256) as engine:
        with running_server(create_app(engine, MODEL)) as url, httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            yield http, engine
            assert http.get("/health").status_code == 200
            wait_for(lambda: engine_idle(engine), 30, "the engine to end every request")


# -- values ------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from(["", " ", "\x00", "\ud800", "a\udfffb", "\U0010ffff", "<|im_end|>", "é" * 40,
                            "\n\n", "{}", "null"])
TEXT = st.text(max_size=24) | ODD_TEXT
HUGE = st.sampled_from([-(2**63), -(2**31), -1, 0, 1, 2**31, 2**63, 2**64, 10**30, -(10**30)])
INTS = st.integers(-3, 40) | HUGE
FLOATS = (st.sampled_from([0.0, 0.5, 1.0, 1.5]) | st.floats(allow_nan=True, allow_infinity=True)
          | st.sampled_from([-0.0, 1e308, -1e-308, 2.0, 100.0]))
JSON = st.recursive(st.none() | st.booleans() | INTS | FLOATS | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=8)
TOKENS = st.lists(st.integers(0, 49151) | st.integers(-2, 49160) | HUGE, max_size=6)

# Each route's fields with values of the right JSON type (their edges included) ...
SAMPLING = {
    "model": st.just(MODEL) | TEXT,
    "n": st.integers(-1, 3) | st.sampled_from([128, 129]) | HUGE,
    "max_tokens": INTS,
    "temperature": FLOATS,
    "top_p": FLOATS,
    "top_k": INTS,
    "min_p": FLOATS,
    "seed": INTS,
    "stop": TEXT | st.lists(TEXT, max_size=5),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "presence_penalty": FLOATS,
    "frequency_penalty": FLOATS,
    "repetition_penalty": FLOATS,
    "logit_bias": st.dictionaries(TEXT, FLOATS, max_size=2),
    "user": TEXT,
    "stop_token_ids": TOKENS,
}
CONTENT = TEXT | st.lists(st.fixed_dictionaries({"type": st.just("text") | TEXT, "text": TEXT | JSON}), max_size=3)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "developer", "tool"]) | TEXT},
    optional={"content": CONTENT | st.none(), "name": TEXT})
PROMPT = st.text(min_size=1, max_size=24) | ODD_TEXT
COMPLETIONS_FIELDS = {"prompt": PROMPT | TOKENS | st.lists(PROMPT | TOKENS, max_size=3)}
COMPLETIONS_OPTIONAL = {**SAMPLING, "logprobs": INTS, "echo": st.booleans(), "best_of": INTS, "suffix": TEXT}
CHAT_FIELDS = {"messages": st.lists(MESSAGE, min_size=1, max_size=3)}
CHAT_OPTIONAL = {**SAMPLING, "max_completion_tokens": INTS, "logprobs": st.booleans(), "top_logprobs": INTS,
                 "chat_template_kwargs": st.dictionaries(TEXT, JSON, max_size=3)}
GENERATE_FIELDS = {"prompt": PROMPT}
GENERATE_OPTIONAL = {"max_tokens": INTS, "temperature": FLOATS, "top_p": FLOATS, "top_k": INTS,
                     "stream": st.booleans()}


def body(required: dict, optional: dict) -> st.SearchStrategy:
    """... in bodies that are mostly well-typed (so most reach the engine),
    some with one field of any JSON value or missing, plus unknown fields,
    and now and then no object at all."""
    # A few optional fields at a time: with all of them, nearly every body
    # would have one bad value and stop at validation.
    typed = st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({**required, **{k: optional[k] for k in keys}}))
    names = sorted({*required, *optional})

    def spoil(d: dict, name: str, value, drop: bool) -> dict:
        d = dict(d)
        if drop:
            d.pop(name, None)
        else:
            d[name] = value
        return d

    spoiled = st.builds(spoil, typed, st.sampled_from(names), JSON, st.booleans())
    extra = st.builds(lambda d, more: {**more, **d}, typed, st.dictionaries(TEXT, JSON, min_size=1, max_size=3))
    return st.one_of(typed, typed, typed, spoiled, extra, JSON)


COMPLETIONS = body(COMPLETIONS_FIELDS, COMPLETIONS_OPTIONAL)
CHAT = body(CHAT_FIELDS, CHAT_OPTIONAL)
GENERATE = body(GENERATE_FIELDS, GENERATE_OPTIONAL)


# -- the property ------------------------------------------------------------------------------


def encode(value) -> bytes:
    """JSON as a lenient client writes it: NaN and Infinity as Python's json
    writes them, lone surrogates escaped (as ``\\ud800``)."""
    return json.dumps(value).encode()


def post(http: httpx.Client, path: str, content: bytes) -> None:
    """Sends one body; fails on a 5xx, on a server error event in a stream, or on a hang."""
    with http.stream("POST", path, content=content, headers={"Content-Type": "application/json"}) as r:
        raw = r.read()
    assert r.status_code < 500, (r.status_code, raw[:500])
    if r.status_code != 200 or not r.headers.get("content-type", "").startswith("text/event-stream"):
        json.loads(raw)  # every answer, error or not, is JSON
        return
    events = [line[len("data: "):] for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", raw[-500:]
    for e in events[:-1]:
        chunk = json.loads(e)
        assert "error" not in chunk or chunk["error"]["type"] != "server_error", chunk


@FUZZ
@given(COMPLETIONS)
@example({"prompt": "hi", "model": "\ud800"})  # the 404's message held the lone surrogate: a 500 at render
@example({"prompt": "hi", "stop": "\ud800", "max_tokens": 2})
@example({"prompt": "hi", "temperature": math.nan, "max_tokens": 2})
@example({"prompt": "hi", "\ud800": 1, "max_tokens": 1})
@example({"prompt": [[]], "max_tokens": 1})
def test_completions_never_answer_5xx(served, value):
    post(served[0], "/v1/completions", encode(value))


@FUZZ
@given(CHAT)
@example({"messages": [{"role": "user", "content": "hi", "\ud800": "x"}], "max_tokens": 1})
@example({"messages": [{"role": "\ud800", "content": "hi"}], "max_tokens": 1})
@example({"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": {"\ud800": 1}, "max_tokens": 1})
def test_chat_completions_never_answer_5xx(served, value):
    post(served[0], "/v1/chat/completions", encode(value))


@FUZZ
@given(GENERATE)
@example({"prompt": "hi", "temperature": math.inf})
def test_generate_never_answers_5xx(served, value):
    post(served[0], "/generate", encode(value))


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(["/v1/completions", "/v1/chat/completions", "/generate"]), st.binary(max_size=64))
@example("/v1/completions", b'{"prompt": "\xff"}')
@example("/generate", b"\xed\xa0\x80")
def test_bytes_that_are_not_json_are_a_400(served, path, content):
    post(served[0], path, content)
