"""Structured output and logit_bias through the OpenAI-compatible server:
OpenAI's ``response_format``, vLLM's ``structured_outputs`` and ``guided_*``,
llama.cpp's ``json_schema`` and ``grammar`` (GBNF), spoken to with the
official ``openai`` client and ``httpx``. With the random-weight chat model
whatever it would say the constraint must hold; with the real SmolLM2 the
JSON answers must also validate, streamed or not."""

from __future__ import annotations

import json
import os
import re

import jsonschema
import openai
import pytest
from server_helpers import Served, engine_idle, running_server, sse_events

from ferrolm import AsyncEngine, hub
from ferrolm.server import create_app

MODEL = "tiny-chat"
CHAT = [{"role": "user", "content": "Describe a person."}]
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 10},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120},
                         "tags": {"type": "array", "maxItems": 3, "items": {"enum": ["a", "b", "c"]}}}}
SAMPLED = {"temperature": 1.0, "max_tokens": 80}


@pytest.fixture(scope="module")
def server(chat_model):
    with AsyncEngine(chat_model, max_seq_len=512) as engine, \
            running_server(create_app(engine, MODEL)) as url:
        served = Served(url, engine)
        yield served
        served.http.close()


def chat(server: Served, **fields) -> list[dict]:
    """The choices of a chat completion sent as raw JSON (every dialect's field names)."""
    sent = server.http.post("/v1/chat/completions", json={"messages": CHAT, **SAMPLED, **fields})
    assert sent.status_code == 200, sent.text
    return sent.json()["choices"]


def complete(server: Served, **fields) -> list[dict]:
    sent = server.http.post("/v1/completions", json={"prompt": "Answer:", **SAMPLED, **fields})
    assert sent.status_code == 200, sent.text
    return sent.json()["choices"]


def finished(choices: list[dict]) -> list[str]:
    """Every choice's text; each must have ended because its constraint was complete."""
    assert all(c["finish_reason"] == "stop" for c in choices), choices
    return [c["message"]["content"] if "message" in c else c["text"] for c in choices]


# -- every dialect holds the output to its constraint --------------------------------


@pytest.mark.parametrize("fields", [
    {"response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}},
    {"response_format": {"type": "json_object", "schema": PERSON}},  # llama.cpp's form
    {"structured_outputs": {"json": PERSON}},
    {"structured_outputs": {"json": json.dumps(PERSON)}},
    {"guided_json": PERSON},
    {"json_schema": PERSON},
], ids=["response_format", "json_object-schema", "structured_outputs", "structured_outputs-text", "guided_json",
        "llama.cpp"])
def test_json_schema_dialects_give_valid_documents(server, fields):
    for text in finished(chat(server, n=6, seed=1, **fields)):
        jsonschema.validate(json.loads(text), PERSON)


def test_json_object_gives_a_json_object(server):
    for text in finished(chat(server, n=6, seed=2, response_format={"type": "json_object"}, max_tokens=200)):
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize(("fields", "pattern"), [
    ({"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}}, r"[0-9]{3}-[a-z]{2}"),
    ({"guided_regex": "(yes|no), [A-Z][a-z]{1,5}"}, r"(yes|no), [A-Z][a-z]{1,5}"),
    ({"structured_outputs": {"choice": ["red", "green", "blue"]}}, r"red|green|blue"),
    ({"guided_choice": ["up", "down"]}, r"up|down"),
    ({"structured_outputs": {"grammar": 'start: "(" N ("+" N)* ")"\nN: /[1-9]/'}}, r"\([1-9](\+[1-9])*\)"),
    ({"guided_grammar": 'root ::= "(" n ("+" n)* ")"\nn ::= [1-9]'}, r"\([1-9](\+[1-9])*\)"),
    ({"grammar": 'root ::= "ab" [0-9]{2,3} | "cd"'}, r"ab[0-9]{2,3}|cd"),  # llama.cpp's GBNF
], ids=["regex", "guided_regex", "choice", "guided_choice", "lark", "guided_grammar-gbnf", "llama.cpp-gbnf"])
def test_regex_choice_and_grammar_dialects_hold_on_both_endpoints(server, fields, pattern):
    texts = finished(chat(server, n=5, seed=3, **fields)) + finished(complete(server, n=5, seed=4, **fields))
    for text in texts:
        assert re.fullmatch(pattern, text), (fields, text)


def test_streamed_constrained_chat_equals_the_whole_answer(server):
    fields = {"messages": CHAT, **SAMPLED, "seed": 11, "n": 2, "stream": True,
              "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}}
    with server.http.stream("POST", "/v1/chat/completions", json=fields) as r:
        assert r.status_code == 200
        events = list(sse_events(r.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    streamed = ["", ""]
    for c in chunks:
        for choice in c["choices"]:
            streamed[choice["index"]] += choice["delta"].get("content") or ""
    whole = finished(chat(server, **{k: v for k, v in fields.items() if k not in ("messages", "stream")}))
    assert streamed == whole
    for text in whole:
        jsonschema.validate(json.loads(text), PERSON)


def test_max_tokens_mid_structure_ends_with_length(server):
    [choice] = chat(server, seed=5, max_tokens=3, json_schema=PERSON)
    assert choice["finish_reason"] == "length"
    text = choice["message"]["content"]
    assert text.startswith('{"name":') or '{"name":'.startswith(text), text  # cut inside the document


# -- logit_bias -------------------------------------------------------------------------


def test_logit_bias_forces_and_bans_tokens(server):
    tok = server.engine.tokenizer
    [forced] = tok.encode(" banana", add_special_tokens=False)[:1]
    out = server.client.completions.create(model=MODEL, prompt="Answer:", max_tokens=3, temperature=0,
                                           logit_bias={str(forced): 100})
    assert out.choices[0].text == tok.decode([forced] * 3)
    plain = server.client.completions.create(model=MODEL, prompt="Answer:", max_tokens=1, temperature=0,
                                             logprobs=1)
    first = plain.choices[0].text
    [first_id] = tok.encode(first, add_special_tokens=False)
    banned = server.client.completions.create(model=MODEL, prompt="Answer:", max_tokens=1, temperature=0,
                                              logit_bias={str(first_id): -100})
    assert banned.choices[0].text != first


# -- bad input: a 400 with the reason, and the server keeps serving ----------------------


BAD = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format", "nonsense"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "schema"),
    ({"response_format": {"type": "xml"}}, "response_format", "'xml' is not supported"),
    ({"response_format": "json"}, "response_format", "type"),
    ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs", "invalid regex"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs", "exactly one"),
    ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs", "structural_tag is not supported"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs", "choice"),
    ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
    ({"grammar": "root ::= undefined-rule"}, "grammar", "undefined"),
    ({"guided_regex": "[0-9]", "response_format": {"type": "json_object"}}, "guided_regex", "only one"),
    ({"logit_bias": {"abc": 1}}, "logit_bias", "token ids"),
    ({"logit_bias": {"1": 250}}, "logit_bias", "[-100, 100]"),
    ({"logit_bias": {"99999999": 1}}, "logit_bias", "outside the vocabulary"),
]


def test_a_schema_nested_thousands_deep_is_a_400(server):
    # Sent as text: json.dumps itself recurses as deep as it nests.
    for levels, reason in ((200, "nested deeper than 128 levels"), (5000, "error parsing the body")):
        schema = '{"type": "array", "items": ' * levels + '{"type": "integer"}' + "}" * levels
        body = '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "guided_json": ' + schema + "}"
        sent = server.http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        assert sent.status_code == 400 and reason in sent.json()["error"]["message"], sent.text
        if levels == 200:
            assert sent.json()["error"]["param"] == "guided_json"
        # The schema as JSON text inside the body (vLLM accepts that too).
        sent = server.http.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 4,
                                                              "structured_outputs": {"json": schema}})
        assert sent.status_code == 400 and "nested" in sent.json()["error"]["message"], sent.text
    assert engine_idle(server.engine)


@pytest.mark.parametrize(("fields", "param", "reason"), BAD, ids=[f"{p}-{r}" for _, p, r in BAD])
def test_bad_constraints_are_400s_with_the_reason(server, fields, param, reason):
    sent = server.http.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 4, **fields})
    assert sent.status_code == 400, sent.text
    err = sent.json()["error"]
    assert err["param"] == param and reason in err["message"], err
    assert finished(chat(server, max_tokens=8, structured_outputs={"choice": ["ok"]})) == ["ok"]
    assert engine_idle(server.engine)


# -- the real default model ---------------------------------------------------------------

ANSWER = {"type": "object", "additionalProperties": False, "required": ["city", "country", "population"],
          "properties": {"city": {"type": "string", "maxLength": 40}, "country": {"type": "string", "maxLength": 40},
                         "population": {"type": "integer", "minimum": 0}}}


@pytest.fixture(scope="module")
def smollm2_server():
    path = os.environ.get("FERROLM_SMOLLM2_GGUF") or hub.resolve("smollm2")
    with AsyncEngine(path, max_seq_len=512) as engine, running_server(create_app(engine, "smollm2")) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_smollm2_answers_json_schema_requests_with_valid_json(smollm2_server):
    messages = [{"role": "user", "content": "Give the capital city of France, its country and population as JSON."}]
    fmt = {"type": "json_schema", "json_schema": {"name": "capital", "schema": ANSWER, "strict": True}}
    out = smollm2_server.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=60,
                                                 response_format=fmt)
    doc = json.loads(out.choices[0].message.content)
    jsonschema.validate(doc, ANSWER)
    assert out.choices[0].finish_reason == "stop"
    stream = smollm2_server.chat.completions.create(model="smollm2", messages=messages, temperature=0,
                                                    max_tokens=60, response_format=fmt, stream=True)
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == out.choices[0].message.content
    sampled = smollm2_server.chat.completions.create(model="smollm2", messages=messages, temperature=0.8, seed=3,
                                                     n=4, max_tokens=60, response_format=fmt)
    for choice in sampled.choices:
        jsonschema.validate(json.loads(choice.message.content), ANSWER)
