"""Structured output: ``SamplingConfig(constraint=...)`` holds every pick to a
JSON schema, a regex, a list of choices or a Lark grammar (llguidance in the
core), whatever the sampling settings, alone or batched with free requests."""

from __future__ import annotations

import json
import re

import pytest

from ferrolm import LLM, SamplingConfig

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def llm(chat_model):
    llm = LLM(chat_model, max_seq_len=256)
    yield llm
    llm.engine.close()


def sampled(seed: int, constraint: dict, max_tokens: int = 48) -> SamplingConfig:
    return SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                          seed=seed, max_tokens=max_tokens, constraint=constraint)


def test_each_kind_of_constraint_holds_in_a_batch_with_free_requests(llm):
    constraints = [{"regex": "[0-9]{3}"}, {"choice": ["yes", "no", "maybe"]}, {"json_schema": SCHEMA},
                   {"grammar": 'start: "(" NUM ("+" NUM)* ")"\nNUM: /[1-9][0-9]?/'}]
    configs = [sampled(seed, c) for seed in range(3) for c in constraints]
    free = [SamplingConfig(temperature=1.0, seed=s, max_tokens=8) for s in range(3)]
    outs = llm.generate(["Give me an answer:"] * (len(configs) + len(free)), configs + free, use_tqdm=False)
    for config, out in zip(configs, outs):
        kind, value = next(iter(config.constraint.items()))
        if out.finish_reason == "length":  # cut by max_tokens mid-structure: only open-ended ones may be
            assert kind in ("json_schema", "grammar"), (config.constraint, out.text)
            continue
        assert out.finish_reason == "stop", (config.constraint, out.text)
        if kind == "regex":
            assert re.fullmatch(value, out.text), out.text
        elif kind == "choice":
            assert out.text in value
        elif kind == "json_schema":
            doc = json.loads(out.text)
            assert set(doc) == {"name", "age"} and isinstance(doc["age"], int) and 0 <= doc["age"] <= 150
            assert len(doc["name"]) <= 12
        else:
            assert re.fullmatch(r"\([1-9][0-9]?(\+[1-9][0-9]?)*\)", out.text), out.text
    assert all(len(out.token_ids) <= 8 for out in outs[len(configs):])


def test_greedy_under_a_constraint_is_reproducible_and_ends_when_complete(llm):
    greedy = SamplingConfig(temperature=0.0, max_tokens=8, constraint={"choice": ["Paris", "London"]})
    first, second = llm.generate(["The capital of France is"] * 2, greedy, use_tqdm=False)
    assert first.text in ("Paris", "London") and first.finish_reason == "stop"
    assert second.token_ids == first.token_ids


@pytest.mark.parametrize("constraint, says", [
    ({"regex": "[0-9"}, "invalid `regex` constraint"),
    ({"json_schema": {"type": "no-such-type"}}, "invalid `json_schema` constraint"),
    ({"grammar": "start: undefined_rule"}, "invalid `grammar` constraint"),
    ({"choice": []}, "choice"),
    ({"regx": "a"}, "unknown variant"),
])
def test_bad_constraints_are_value_errors_before_anything_runs(llm, constraint, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        llm.generate("hi", SamplingConfig(max_tokens=4, constraint=constraint), use_tqdm=False)
    [out] = llm.generate("hi", SamplingConfig(temperature=0.0, max_tokens=2), use_tqdm=False)
    assert len(out.token_ids) == 2, "the engine keeps serving"


def test_ignore_eos_stops_at_a_complete_constraint(llm):
    # Past a complete grammar only end-of-sequence may follow: ignore_eos
    # must not turn that into max_tokens of end-of-sequence tokens.
    config = sampled(3, {"choice": ["yes", "no"]}, max_tokens=20)
    config.ignore_eos = True
    [out] = llm.generate(["Answer:"], config, use_tqdm=False)
    assert out.text in ("yes", "no") and out.finish_reason == "stop"


def test_inference_session_turns_follow_their_constraint(chat_model):
    from ferrolm import InferenceSession

    with InferenceSession(chat_model, max_seq_len=512) as session:
        config = sampled(4, {"json_schema": SCHEMA}, max_tokens=40)
        doc = json.loads(session.generate("Describe someone.", config))
        assert set(doc) == {"name", "age"}
        # The answer stays in the history as text, and the next turn has its own constraint.
        assert json.loads(session.history[-1]["content"]) == doc
        assert session.generate("Yes or no?", sampled(5, {"choice": ["yes", "no"]})) in ("yes", "no")


def test_a_schema_nested_past_the_bound_is_a_value_error_not_a_crash(llm):
    # Compiling recurses as deep as the schema nests: thousands of levels
    # would overflow the stack (a crash), so they are refused up front.
    schema = {"type": "integer"}
    for _ in range(100_000):
        schema = {"type": "array", "items": schema}
    with pytest.raises(ValueError, match="nested deeper than 128 levels"):
        llm.generate(["x"], sampled(1, {"json_schema": schema}), use_tqdm=False)
