"""Tool calling through the OpenAI-compatible server, for each tool format the
core detects from a chat template: Qwen3's hermes ``<tool_call>`` blocks,
Llama 3.1's JSON with ``parameters``, and the generic format injected into
the system prompt of templates that ignore ``tools`` (SmolLM2's). The model
has random weights: a forced call (``required`` or a named function) must be
valid whatever it would say; ``auto`` must round-trip calls and results
through the history; streamed tool-call deltas must add up to the whole answer."""

from __future__ import annotations

import json
import shutil

import jsonschema
import pytest
from server_helpers import Served, engine_idle, running_server, sse_events

from conftest import TOKENIZERS
from ferrolm import AsyncEngine
from ferrolm.server import create_app

WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "unit"],
           "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["C", "F"]}}}
ADD = {"type": "object", "additionalProperties": False, "required": ["a", "b"],
       "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                      "b": {"type": "integer", "minimum": 0, "maximum": 99}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "Adds two numbers.", "parameters": ADD}}]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SAMPLED = {"temperature": 1.0, "max_tokens": 120}

# Fixture family -> the chat template it is served with (None: SmolLM2's own).
FAMILIES = {"hermes": "qwen3", "llama3": "llama-3.1", "generic": None}


def chat(server: Served, **fields) -> dict:
    sent = server.http.post("/v1/chat/completions", json={"messages": ASK, **SAMPLED, **fields})
    assert sent.status_code == 200, sent.text
    return sent.json()


@pytest.fixture(scope="module", params=list(FAMILIES))
def server(request, chat_model, tmp_path_factory):
    template = FAMILIES[request.param]
    d = tmp_path_factory.mktemp(f"tools_{request.param}")
    shutil.copytree(chat_model, d, dirs_exist_ok=True)
    if template is not None:
        source = json.loads((TOKENIZERS / "chat" / "templates.json").read_text())[template]["source"]
        (d / "chat_template.jinja").write_text(source)
    with AsyncEngine(d, max_seq_len=1024) as engine, running_server(create_app(engine, "tiny")) as url:
        served = Served(url, engine)
        served.family = request.param
        yield served
        served.http.close()


def valid_calls(message: dict, names: set[str]) -> list[dict]:
    """The message's tool calls, each to one of ``names`` with arguments valid for its tool."""
    calls = message["tool_calls"]
    assert calls, message
    for call in calls:
        assert call["type"] == "function" and call["id"].startswith("call_")
        assert call["function"]["name"] in names
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[call["function"]["name"]])
    return calls


def test_the_format_is_detected_from_the_template(server):
    from ferrolm import _core

    calling = _core.ToolCalling(server.engine.tokenizer.chat_template, json.dumps(TOOLS), None, True)
    assert calling.format == {"hermes": "hermes", "llama3": "llama3_json", "generic": "generic"}[server.family]


def test_required_gives_a_valid_call_to_some_tool(server):
    out = chat(server, n=6, seed=1, tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    for choice in out["choices"]:
        assert choice["finish_reason"] == "tool_calls", choice
        assert len(valid_calls(choice["message"], set(SCHEMAS))) == 1


def test_a_named_function_is_the_one_called(server):
    named = {"type": "function", "function": {"name": "add"}}
    out = chat(server, n=6, seed=2, tools=TOOLS, tool_choice=named)
    for choice in out["choices"]:
        assert choice["finish_reason"] == "tool_calls", choice
        assert {c["function"]["name"] for c in valid_calls(choice["message"], {"add"})} == {"add"}


def test_parallel_calls_only_when_allowed(server):
    # A bias towards the newline that separates calls makes the model write
    # several where the grammar lets it, and none where it must not.
    [newline] = server.engine.tokenizer.encode("\n", add_special_tokens=False)
    fields = {"n": 4, "seed": 3, "tools": TOOLS, "tool_choice": "required", "max_tokens": 200,
              "logit_bias": {str(newline): 100}}
    many = [valid_calls(c["message"], set(SCHEMAS)) for c in chat(server, **fields)["choices"]]
    one = chat(server, **fields, parallel_tool_calls=False)["choices"]
    assert all(c["finish_reason"] == "tool_calls" for c in one)
    assert [len(valid_calls(c["message"], set(SCHEMAS))) for c in one] == [1] * 4
    if server.family == "llama3":
        assert [len(calls) for calls in many] == [1] * 4  # Llama 3.1 calls one tool per message
    else:
        assert all(len(calls) >= 2 for calls in many), [len(calls) for calls in many]


def test_streamed_tool_call_deltas_add_up_to_the_whole_answer(server):
    fields = {"n": 3, "seed": 4, "tools": TOOLS, "tool_choice": "required"}
    whole = chat(server, **fields)["choices"]
    with server.http.stream("POST", "/v1/chat/completions",
                            json={"messages": ASK, **SAMPLED, **fields, "stream": True}) as r:
        assert r.status_code == 200
        events = list(sse_events(r.iter_lines()))
    assert events[-1] == "[DONE]"
    calls: dict[int, dict[int, dict]] = {}
    content = {k: "" for k in range(3)}
    finish = {}
    for e in events[:-1]:
        for choice in json.loads(e)["choices"]:
            k = choice["index"]
            content[k] += choice["delta"].get("content") or ""
            for d in choice["delta"].get("tool_calls") or []:
                calls.setdefault(k, {}).setdefault(d["index"], {"name": "", "arguments": ""})
                calls[k][d["index"]]["name"] += d["function"].get("name") or ""
                calls[k][d["index"]]["arguments"] += d["function"].get("arguments") or ""
            if choice["finish_reason"]:
                finish[k] = choice["finish_reason"]
    for k, choice in enumerate(whole):
        expected = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                    for c in choice["message"]["tool_calls"]]
        assert [calls[k][i] for i in sorted(calls[k])] == expected
        assert (content[k] or None) == choice["message"]["content"]
        assert finish[k] == choice["finish_reason"] == "tool_calls"


def test_auto_round_trips_a_call_and_its_result_through_the_history(server):
    first = chat(server, seed=5, tools=TOOLS, tool_choice="required")["choices"][0]["message"]
    [call] = valid_calls(first, set(SCHEMAS))[:1]
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "tool_call_id": call["id"], "content": "18 degrees and sunny"}]
    out = server.client.chat.completions.create(model="tiny", messages=history, tools=TOOLS, tool_choice="auto",
                                                max_tokens=40, temperature=1.0, seed=6)
    choice = out.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
    # The call and its result reached the prompt: it is longer than the question alone.
    alone = server.client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, max_tokens=1)
    assert out.usage.prompt_tokens > alone.usage.prompt_tokens
    # tool_choice "none" hides the tools: a shorter prompt, and text only.
    hidden = server.client.chat.completions.create(model="tiny", messages=history, tools=TOOLS,
                                                   tool_choice="none", max_tokens=8, temperature=1.0, seed=6)
    assert hidden.choices[0].message.tool_calls is None
    assert engine_idle(server.engine)


BAD = [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "nope"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools", "name"),
    ({"tools": [{"type": "retrieval"}]}, "tools", "function"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "sometimes"),
    ({"functions": [{"name": "f"}]}, "functions", "use `tools`"),
    ({"function_call": "auto"}, "function_call", "use `tool_choice`"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format", "combined with tools"),
    ({"messages": [*ASK, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "add", "arguments": "{not json"}}]}], "tools": TOOLS},
     "messages", "arguments"),
]


@pytest.mark.parametrize(("fields", "param", "reason"), BAD, ids=[f"{p}-{r}" for _, p, r in BAD])
def test_bad_tool_requests_are_400s_with_the_reason(server, fields, param, reason):
    sent = server.http.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 4, **fields})
    assert sent.status_code == 400, sent.text
    err = sent.json()["error"]
    assert err["param"] == param and reason in err["message"], err
    assert chat(server, max_tokens=2)["usage"]["completion_tokens"] <= 2
    assert engine_idle(server.engine)
