"""Exactness of structured output on a random-weight model: whatever the model
would say, the constraint holds.

- ``SCHEMAS``: JSON schemas covering the features llguidance compiles (nested
  objects, array bounds, enums, const, integer and number ranges with exclusive
  bounds and ``multipleOf``, booleans, null, string lengths, ``pattern``,
  ``format``, ``anyOf``, disjoint ``oneOf``, ``allOf``, ``$ref``/``$defs``
  (recursive too), optional properties (with ``minProperties``/``maxProperties``
  1), type unions, arrays of objects, ``prefixItems``, ``patternProperties``,
  annotations). Objects are closed (``additionalProperties: false``: llguidance
  otherwise lets any extra property through, as the spec says) and every string,
  array and number is bounded, so each of the 20 samples per schema
  (temperature 1, no filters, distinct seeds and prompts) must end by itself
  (``finish_reason == "stop"``), parse with ``json.loads`` without repeated keys
  and validate with ``jsonschema`` (formats checked too).
- ``OPEN_ENDED``: numbers with no bound on their digits; nearly all must end
  and the few cut by ``max_tokens`` must be prefixes of valid documents.
- Schemas llguidance rejects raise ``ValueError`` naming the problem, and
  nothing is queued.
- The mask never removes the model's own continuation: under a grammar that
  accepts every token sequence (``start: <[*]>*``) greedy decoding is token
  for token (and finish reason) what it is unconstrained, end-of-sequence
  included; under a grammar of all *text* (``(.|\\n)*``) the same holds up to the
  first special token, which text grammars never produce.

Keywords llguidance refuses at compile time (so not here): ``uniqueItems``,
``contains``, ``propertyNames``, ``dependentRequired``, ``not``, ``if``/``then``,
``unevaluatedProperties``, ``min/maxProperties`` next to optional properties (other than
``minProperties: 1`` and ``maxProperties: 1``),
``oneOf`` whose branches it cannot prove disjoint.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import uuid

import jsonschema
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ferrolm import LLM, SamplingConfig

SAMPLES = 20


def obj(props: dict, required: list[str] | None = None, **extra) -> dict:
    """A closed object schema; every property required unless `required` says otherwise."""
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": False, **extra}


NAME = {"type": "string", "maxLength": 10}
SMALL = {"type": "integer", "minimum": 0, "maximum": 99}

# Every schema bounds its strings, arrays and numbers, so every sample ends well within max_tokens.
SCHEMAS = {
    "flat": obj({"name": NAME, "age": SMALL, "ok": {"type": "boolean"}}),
    "nested_objects": obj({"user": obj({"id": SMALL, "profile": obj({"nick": NAME, "score": SMALL})}), "tag": NAME}),
    "empty_object": obj({}),
    "array_min_max_items": obj({"xs": {"type": "array", "items": SMALL, "minItems": 2, "maxItems": 5}}),
    "array_exact_length": {"type": "array", "items": {"type": "boolean"}, "minItems": 3, "maxItems": 3},
    "nested_arrays": {"type": "array", "maxItems": 3, "items": {"type": "array", "maxItems": 3, "items": SMALL}},
    "array_of_objects": obj({"rows": {"type": "array", "minItems": 1, "maxItems": 4, "items": obj({"k": NAME,
                                                                                                  "v": SMALL})}}),
    "prefix_items": {"type": "array", "prefixItems": [{"type": "string", "maxLength": 5}, SMALL, {"type": "boolean"}],
                     "items": False, "minItems": 3},
    "enum_strings": obj({"color": {"enum": ["red", "green", "blue"]}}),
    "enum_mixed_types": {"enum": ["a", 1, True, None, {"k": "v"}, [1, 2]]},
    "enum_escapes": obj({"s": {"enum": ['say "hi"', "back\\slash", "line\nbreak", "tab\t", "ünï€😀", "</script>"]}}),
    "const": obj({"version": {"const": 2}, "kind": {"const": "point"}, "x": SMALL}),
    "integer_negative_range": obj({"t": {"type": "integer", "minimum": -40, "maximum": 50}}),
    "integer_exclusive_bounds": obj({"n": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}}),
    "integer_wide_range": obj({"n": {"type": "integer", "minimum": 1000, "maximum": 1000000}}),
    "integer_multiple_of": obj({"m": {"type": "integer", "minimum": 0, "maximum": 100, "multipleOf": 5}}),
    # Number digits are unbounded (see OPEN_ENDED); multipleOf bounds them. Steps of 1/4 and 1/2 are
    # exact in binary, so jsonschema's float division checks them exactly.
    "number_exclusive_minimum": obj({"q": {"type": "number", "exclusiveMinimum": -1.5, "maximum": 2.5,
                                           "multipleOf": 0.25}}),
    "number_exclusive_maximum": obj({"p": {"type": "number", "minimum": 0, "exclusiveMaximum": 100,
                                           "multipleOf": 0.5}}),
    "boolean_and_null": obj({"a": {"type": "boolean"}, "b": {"type": "null"}}),
    "string_min_max_length": obj({"code": {"type": "string", "minLength": 3, "maxLength": 6}}),
    "string_empty": {"type": "string", "maxLength": 0},
    "pattern_anchored": obj({"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,4}$"}}),
    "pattern_unanchored": obj({"id": {"type": "string", "pattern": "[a-f0-9]{8}", "maxLength": 12}}),
    "format_date": obj({"d": {"type": "string", "format": "date"}}),
    "format_time": obj({"t": {"type": "string", "format": "time"}}),
    "format_date_time": obj({"ts": {"type": "string", "format": "date-time"}}),
    "format_duration": obj({"p": {"type": "string", "format": "duration", "maxLength": 12}}),
    "format_uuid": obj({"u": {"type": "string", "format": "uuid"}}),
    "format_ipv4": obj({"ip": {"type": "string", "format": "ipv4"}}),
    "format_ipv6": obj({"ip": {"type": "string", "format": "ipv6"}}),
    "format_email": obj({"e": {"type": "string", "format": "email", "maxLength": 20}}),
    "format_hostname": obj({"h": {"type": "string", "format": "hostname", "maxLength": 20}}),
    "format_uri": obj({"u": {"type": "string", "format": "uri", "maxLength": 30}}),
    "any_of": obj({"v": {"anyOf": [SMALL, {"type": "string", "maxLength": 5}, {"type": "null"}]}}),
    "one_of_by_type": obj({"v": {"oneOf": [{"type": "boolean"}, {"type": "string", "maxLength": 4}]}}),
    "one_of_tagged": {"oneOf": [obj({"kind": {"const": "circle"}, "r": SMALL}),
                                obj({"kind": {"const": "square"}, "side": SMALL})]},
    "array_of_any_of_records": {"type": "array", "maxItems": 4, "items": {"anyOf": [
        obj({"t": {"const": "a"}, "n": SMALL}), obj({"t": {"const": "b"}, "s": NAME})]}},
    "all_of": {"allOf": [obj({"a": SMALL, "b": NAME}, ["a"]), {"required": ["b"]}]},
    "ref_defs": {"$defs": {"pt": obj({"x": SMALL, "y": SMALL})},
                 **obj({"a": {"$ref": "#/$defs/pt"}, "b": {"$ref": "#/$defs/pt"}})},
    "ref_recursive": {"$defs": {"node": obj({"v": SMALL, "kids": {"type": "array", "maxItems": 2,
                                                                  "items": {"$ref": "#/$defs/node"}}}, ["v"])},
                      "$ref": "#/$defs/node"},
    "optional_properties": obj({"id": SMALL, "note": NAME, "flag": {"type": "boolean"}}, ["id"]),
    "all_optional": obj({"a": SMALL, "b": NAME}, []),
    "min_properties_one": obj({"a": SMALL, "b": SMALL, "c": SMALL}, [], minProperties=1),
    "exactly_one_property": obj({"a": SMALL, "b": NAME, "c": {"type": "boolean"}}, [], minProperties=1,
                                maxProperties=1),
    "type_unions": obj({"mid": {"type": ["string", "null"], "maxLength": 8},
                        "n": {"type": ["integer", "boolean"], "minimum": 0, "maximum": 9}}),
    "unicode_and_escaped_keys": obj({"名前": NAME, 'key with "quotes"': SMALL, "back\\slash": {"type": "boolean"}}),
    "pattern_properties": {"type": "object", "patternProperties": {"^x[0-9]$": SMALL}, "additionalProperties": False,
                           "maxProperties": 3},
    "top_level_string": {"type": "string", "maxLength": 16},
    "top_level_integer": SMALL,
    "annotations": {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "https://example.com/item",
                    "title": "Item", "description": "An item.", "examples": [{"n": 1}], "$comment": "ignored",
                    **obj({"n": {**SMALL, "title": "N", "default": 3, "deprecated": True}})},
}

# llguidance does not remember which patternProperties keys an object already has: ~7% of
# samples repeat one (e.g. {"x5":47,"x5":0}). Declared properties never repeat.
KEYS_MAY_REPEAT = {"pattern_properties"}

# Plain numbers: llguidance bounds their value but not their digits, so a sample may go on for
# hundreds of tokens (seen: 295). Given room, nearly all end.
OPEN_ENDED = {
    "number_range": obj({"p": {"type": "number", "minimum": 0, "maximum": 1}}),
    "number_exclusive_range": obj({"q": {"type": "number", "exclusiveMinimum": -1.5, "exclusiveMaximum": 2.5}}),
    "integer_unbounded": obj({"n": {"type": "integer"}}),
}

# ---------------------------------------------------------------------------------------------
# Formats, checked with the standard library (jsonschema's own checkers skip several of these
# without optional packages, and read "time" as draft 3's).

FORMATS = jsonschema.FormatChecker(formats=())
TIME = re.compile(r"(\d{2}):(\d{2}):(\d{2})(\.\d+)?([zZ]|[+-](\d{2}):(\d{2}))")


@FORMATS.checks("date")
def is_date(s: str) -> bool:
    # RFC 3339's full-date (years 0000-9999). llguidance's date lets February have 29 days in every
    # year (its regex knows no leap years), so February 29 passes here whatever the year.
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", s)
    if not m:
        return False
    month, day = int(m[2]), int(m[3])
    return 1 <= month <= 12 and 1 <= day <= (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)[month - 1]


@FORMATS.checks("time")
def is_time(s: str) -> bool:
    m = TIME.fullmatch(s)
    if not m:
        return False
    h, mi, sec = int(m[1]), int(m[2]), int(m[3])
    ok = h < 24 and mi < 60 and sec <= 60  # RFC 3339 allows a leap second
    return ok and (m[6] is None or (int(m[6]) < 24 and int(m[7]) < 60))


@FORMATS.checks("date-time")
def is_date_time(s: str) -> bool:
    parts = re.split("[tT]", s)
    return len(parts) == 2 and is_date(parts[0]) and is_time(parts[1])


@FORMATS.checks("duration")
def is_duration(s: str) -> bool:
    # RFC 3339, appendix A.
    time = r"T(\d+H(\d+M(\d+S)?)?|\d+M(\d+S)?|\d+S)"
    date = r"(\d+D|\d+M(\d+D)?|\d+Y(\d+M(\d+D)?)?)"
    return re.fullmatch(rf"P({date}({time})?|{time}|\d+W)", s) is not None


@FORMATS.checks("uuid", raises=ValueError)
def is_uuid(s: str) -> bool:
    uuid.UUID(s)
    return re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", s) is not None


@FORMATS.checks("ipv4", raises=ValueError)
def is_ipv4(s: str) -> bool:
    return bool(ipaddress.IPv4Address(s))


@FORMATS.checks("ipv6", raises=ValueError)
def is_ipv6(s: str) -> bool:
    return bool(ipaddress.IPv6Address(s))


@FORMATS.checks("hostname")
def is_hostname(s: str) -> bool:
    label = r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    return len(s) <= 253 and re.fullmatch(rf"{label}(\.{label})*", s) is not None


@FORMATS.checks("email", raises=ValueError)
def is_email(s: str) -> bool:
    # RFC 5321's Mailbox: a dot-string, then a domain or an address literal.
    local, _, domain = s.rpartition("@")
    atom = r"[a-zA-Z0-9!#$%&'*+\-/=?^_`{|}~]+"
    if not re.fullmatch(rf"{atom}(\.{atom})*", local):
        return False
    if domain.startswith("[") and domain.endswith("]"):
        return is_ipv4(domain[1:-1])
    return is_hostname(domain)


@FORMATS.checks("uri")
def is_uri(s: str) -> bool:
    # RFC 3986: a scheme, then only characters a URI may hold (percent-escapes whole).
    return re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.\-]*:([a-zA-Z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9a-fA-F]{2})*",
                        s) is not None


def no_repeated_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"repeated keys: {keys}"
    return dict(pairs)


def check(text: str, schema: dict, keys_may_repeat: bool = False) -> None:
    doc = json.loads(text) if keys_may_repeat else json.loads(text, object_pairs_hook=no_repeated_keys)
    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator, format_checker=FORMATS)


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llm(chat_model):
    llm = LLM(chat_model, max_seq_len=640)
    yield llm
    llm.close()


def sampled(schema: dict, max_tokens: int) -> list[SamplingConfig]:
    return [SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, seed=seed,
                           max_tokens=max_tokens, constraint={"json_schema": schema}) for seed in range(SAMPLES)]


PROMPTS = [f"Record {i} as JSON:" for i in range(SAMPLES)]


def test_the_format_checks_reject_what_they_should():
    bad = {"date": "2023-04-31", "time": "24:00:00Z", "date-time": "2023-01-01 10:00:00Z", "duration": "P1H",
           "uuid": "1234", "ipv4": "256.1.1.1", "ipv6": "1:::2", "email": "a b@c", "hostname": "-a", "uri": "a b:"}
    good = {"date": "0000-02-29", "time": "23:59:60.5+01:00", "date-time": "2023-01-01t10:00:00z",
            "duration": "P1Y2M3DT4H5M6S", "uuid": "123e4567-E89B-12d3-a456-426614174000", "ipv4": "10.0.0.1",
            "ipv6": "::1", "email": "a.b+c@d-e.f", "hostname": "a-1.b", "uri": "urn:x:%20y"}
    assert set(bad) == set(FORMATS.checkers) == set(good)
    for name, value in bad.items():
        assert not FORMATS.conforms(value, name), (name, value)
    for name, value in good.items():
        assert FORMATS.conforms(value, name), (name, value)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_sample_is_a_complete_valid_document(llm, name):
    schema = SCHEMAS[name]
    outs = llm.generate(PROMPTS, sampled(schema, max_tokens=200), use_tqdm=False)
    for out in outs:
        assert out.finish_reason == "stop", (out.finish_reason, out.text)
        check(out.text, schema, keys_may_repeat=name in KEYS_MAY_REPEAT)


@pytest.mark.parametrize("name", list(OPEN_ENDED))
def test_unbounded_numbers_end_or_are_cut_as_prefixes(llm, name):
    schema = OPEN_ENDED[name]
    outs = llm.generate(PROMPTS, sampled(schema, max_tokens=512), use_tqdm=False)
    cut = [out for out in outs if out.finish_reason == "length"]
    assert len(cut) <= SAMPLES // 10, [out.text for out in cut]
    for out in outs:
        if out.finish_reason == "stop":
            check(out.text, schema)
        else:
            # Cut inside the number: closing it (after a digit if it ends in ".", "e" or a sign) is valid.
            assert out.finish_reason == "length", out.finish_reason
            ends = []
            for tail in ("}", "0}"):
                try:
                    check(out.text + tail, schema)
                    ends.append(tail)
                except (ValueError, jsonschema.ValidationError):
                    pass
            assert ends, out.text


@pytest.mark.parametrize("schema, says", [
    ({"type": "no-such-type"}, "Invalid type: no-such-type"),
    ({"type": 5}, "type must be a string or array of strings"),
    ({"$ref": "#/$defs/missing"}, "'/$defs/missing' does not exist"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, "minLength (5) is greater than maxLength (2)"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum (5) is greater than maximum (1)"),
    ({"type": "string", "pattern": "[a-"}, "unclosed character class"),
    ({"type": "string", "format": "no-such-format"}, "Unknown format: no-such-format"),
    (obj({"a": SMALL}, ["a", "b"]), "required property 'b' is unsatisfiable"),
    ({"type": "array", "minItems": -1}, "Expected positive integer for 'minItems', got -1"),
    ({"type": "array", "uniqueItems": True}, 'Unimplemented keys: ["uniqueItems"]'),
    ({"type": "array", "contains": SMALL}, 'Unimplemented keys: ["contains"]'),
    ({"type": "object", "propertyNames": {"maxLength": 3}}, 'Unimplemented keys: ["propertyNames"]'),
    ({"type": "object", "dependentRequired": {"a": ["b"]}}, 'Unimplemented keys: ["dependentRequired"]'),
    ({"type": "integer", "not": {"const": 3}}, 'Unimplemented keys: ["not"]'),
    ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, 'Unimplemented keys: ["if", "then"]'),
    ({"type": "object", "unevaluatedProperties": False}, 'Unimplemented keys: ["unevaluatedProperties"]'),
    (obj({"a": SMALL, "b": SMALL, "c": SMALL}, [], maxProperties=2),
     'min/maxProperties only supported when all keys listed in "properties" are required'),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf constraints are not supported"),
])
def test_schemas_llguidance_rejects_are_value_errors_naming_the_problem(llm, schema, says):
    before = llm.stats()["requests_added"]
    with pytest.raises(ValueError, match="(?s)invalid `json_schema` constraint: .*" + re.escape(says)):
        llm.generate("hi", SamplingConfig(max_tokens=4, constraint={"json_schema": schema}), use_tqdm=False)
    assert llm.stats()["requests_added"] == before, "nothing was queued"


# ---------------------------------------------------------------------------------------------
# The mask keeps the model's own continuation.

IM_START, IM_END = 1, 2  # <|im_start|>, and <|im_end|>: the model's end-of-sequence token


@pytest.fixture(scope="module")
def eos_prone_model(chat_model, tmp_path_factory):
    """The chat model with the (tied) embeddings of <|im_start|> and <|im_end|> scaled up, so that
    greedy runs emit the special token and end at EOS partway (the plain random model never does)."""
    d = tmp_path_factory.mktemp("eos_prone_model")
    for f in chat_model.iterdir():
        shutil.copy(f, d / f.name)
    tensors = load_file(str(chat_model / "model.safetensors"))
    embed = tensors["model.embed_tokens.weight"].copy()
    embed[[IM_START, IM_END]] *= np.float32(2.5)
    tensors["model.embed_tokens.weight"] = embed
    save_file(tensors, str(d / "model.safetensors"))
    tokenizer = json.loads((chat_model / "tokenizer.json").read_text())
    special = {t["id"] for t in tokenizer["added_tokens"] if t["special"]}
    llm = LLM(d, max_seq_len=256)
    yield llm, special
    llm.close()


GREEDY_PROMPTS = ["Hello,", "The capital of France is", "def f(x):", "1, 2, 3,", "Once upon a time", '{"a": 1',
                  "Paris", "hmm"]


def greedy(constraint: dict | None = None) -> SamplingConfig:
    return SamplingConfig(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0, max_tokens=40,
                          constraint=constraint)


@pytest.fixture(scope="module")
def free_runs(eos_prone_model):
    llm, special = eos_prone_model
    runs = llm.generate(GREEDY_PROMPTS, greedy(), use_tqdm=False)
    # The comparisons below mean something only if these happen.
    assert any(r.finish_reason == "stop" for r in runs), "no run ended at EOS"
    assert any(r.finish_reason == "length" for r in runs), "no run was cut by max_tokens"
    assert any(special & set(r.token_ids) for r in runs), "no run emitted a special token"
    assert any(r.finish_reason == "stop" and not special & set(r.token_ids) for r in runs)
    return runs


@pytest.mark.parametrize("constraint", [{"grammar": "start: <[*]>*"}, {"grammar": "start: tok*\ntok: <[*]>"}])
def test_greedy_under_an_accept_all_grammar_is_greedy_unconstrained(eos_prone_model, free_runs, constraint):
    llm, _ = eos_prone_model
    runs = llm.generate(GREEDY_PROMPTS, greedy(constraint), use_tqdm=False)
    for free, run in zip(free_runs, runs):
        assert run.token_ids == free.token_ids
        assert run.finish_reason == free.finish_reason


@pytest.mark.parametrize("constraint", [{"regex": "(.|\n)*"}, {"grammar": "start: /(.|\\n)*/"}])
def test_greedy_under_an_any_text_grammar_is_greedy_unconstrained_up_to_special_tokens(
        eos_prone_model, free_runs, constraint):
    llm, special = eos_prone_model
    runs = llm.generate(GREEDY_PROMPTS, greedy(constraint), use_tqdm=False)
    for free, run in zip(free_runs, runs):
        assert not special & set(run.token_ids), "text grammars never produce special tokens"
        first = next((i for i, t in enumerate(free.token_ids) if t in special), None)
        if first is None:
            assert run.token_ids == free.token_ids
            assert run.finish_reason == free.finish_reason
        else:
            assert run.token_ids[:first] == free.token_ids[:first]
            assert run.token_ids[first:first + 1] != free.token_ids[first:first + 1]
