"""Structured-output request fields -> the core's ``SamplingConfig.constraint``.

Three dialects name the same thing, and clients send all of them:

- OpenAI's ``response_format``: ``text``, ``json_object`` (any JSON object;
  llama.cpp's server also takes a ``schema`` beside it) and ``json_schema``
  (``{"json_schema": {"name", "schema", "strict"}}``);
- vLLM's ``structured_outputs`` (``json``, ``regex``, ``choice``, ``grammar``,
  ``json_object``) and its older top-level ``guided_json`` /
  ``guided_regex`` / ``guided_choice`` / ``guided_grammar``;
- llama.cpp's top-level ``json_schema`` and ``grammar`` (GBNF).

A request may use one of them; two that both constrain the output are
refused, as is anything that would shape the output in a way the engine
does not implement. Grammars are llguidance's Lark, or llama.cpp's GBNF
(recognised by its ``::=`` rules), which the core translates.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ferrolm.server.errors import APIError
from ferrolm.server.protocol import SamplingFields

# vLLM's structured_outputs keys that choose the constraint, and the ones
# that only tune how it is enforced (harmless here: JSON is compact already
# and there is no fallback backend to disable).
_VLLM_KINDS = ("json", "regex", "choice", "grammar", "json_object")
_VLLM_HARMLESS = {"disable_fallback", "disable_any_whitespace"}
_GBNF_RULE = re.compile(r"^\s*[A-Za-z][A-Za-z0-9_-]*\s*::=", re.MULTILINE)


def constraint_of(req: SamplingFields) -> tuple[str, dict[str, Any]] | None:
    """The request field that asks for structured output and its constraint
    as the core reads it (``{"json_schema": ...}``, ``{"regex": ...}``, ...),
    or None when it asks for free text."""
    found: list[tuple[str, dict[str, Any]]] = []
    if req.response_format is not None:
        c = _response_format(req.response_format)
        if c is not None:
            found.append(("response_format", c))
    if req.structured_outputs is not None:
        found.append(("structured_outputs", _vllm(req.structured_outputs, "structured_outputs")))
    for name in ("json", "regex", "choice", "grammar"):
        value = getattr(req, f"guided_{name}")
        if value is not None:
            found.append((f"guided_{name}", _vllm({name: value}, f"guided_{name}")))
    if req.json_schema is not None:
        found.append(("json_schema", {"json_schema": _schema(req.json_schema, "json_schema")}))
    if req.grammar is not None:
        found.append(("grammar", {"gbnf": _text(req.grammar, "grammar")}))
    if len(found) > 1:
        names = ", ".join(f"`{name}`" for name, _ in found)
        raise APIError(f"{names} each constrain the output: set only one of them", param=found[1][0])
    return found[0] if found else None


def _response_format(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise APIError('response_format must be an object with a "type"', param="response_format")
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        # llama.cpp's server lets json_object carry a schema.
        schema = value.get("schema")
        return {"json_schema": {"type": "object"} if schema is None else _schema(schema, "response_format.schema")}
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise APIError('response_format of type "json_schema" needs json_schema: {"name": ..., "schema": {...}}',
                           param="response_format")
        return {"json_schema": _schema(spec["schema"], "response_format.json_schema.schema")}
    raise APIError(f"response_format type {kind!r} is not supported: use text, json_object or json_schema",
                   param="response_format")


def _vllm(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise APIError(f"{param} must be an object", param=param)
    set_kinds = [k for k in _VLLM_KINDS if value.get(k) not in (None, False)]
    unknown = [k for k, v in value.items() if k not in _VLLM_KINDS and k not in _VLLM_HARMLESS and v not in
               (None, False, "")]
    if unknown:
        raise APIError(f"{param}.{unknown[0]} is not supported", param=param)
    if len(set_kinds) != 1:
        raise APIError(f"{param} needs exactly one of {', '.join(_VLLM_KINDS)}", param=param)
    kind = set_kinds[0]
    spec = value[kind]
    if kind == "json":
        return {"json_schema": _schema(spec, param)}
    if kind == "json_object":
        return {"json_schema": {"type": "object"}}
    if kind == "regex":
        return {"regex": _text(spec, param)}
    if kind == "choice":
        if not isinstance(spec, list) or not spec or not all(isinstance(c, str) for c in spec):
            raise APIError(f"{param}: choice must be a non-empty list of strings", param=param)
        return {"choice": spec}
    grammar = _text(spec, param)
    return {"gbnf" if _GBNF_RULE.search(grammar) else "grammar": grammar}


def _schema(value: Any, param: str) -> Any:
    """A JSON schema given as an object (or, as vLLM allows, as JSON text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise APIError(f"{param}: the schema is not valid JSON: {e}", param=param.split(".")[0]) from None
        except RecursionError:
            raise APIError(f"{param}: the schema is nested too deeply", param=param.split(".")[0]) from None
    if not isinstance(value, (dict, bool)):
        raise APIError(f"{param}: a JSON schema must be an object", param=param.split(".")[0])
    return value


def _text(value: Any, param: str) -> str:
    if not isinstance(value, str) or not value:
        raise APIError(f"{param} must be a non-empty string", param=param)
    return value
