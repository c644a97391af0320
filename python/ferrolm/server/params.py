"""Request fields -> ``SamplingConfig``, with OpenAI's defaults.

``SamplingConfig``'s own defaults are the session API's (temperature 0.6, top_k 20,
repetition penalty 1.1, ...). An OpenAI client that sends only a prompt
expects plain sampling at temperature 1, so every field is set here
explicitly and none falls through to those defaults. A server started with
an inference config (``ferrolm serve --config``) uses the sampling fields
that file sets as the defaults of requests that leave them out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ferrolm._validate import config_error_field
from ferrolm.sampling import SamplingConfig
from ferrolm.server.errors import APIError
from ferrolm.server.protocol import SamplingFields

MAX_LOGPROBS = 20  # OpenAI's limit for completions' logprobs and chat's top_logprobs
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
# Plain sampling at temperature 1: what an OpenAI client that sends only a prompt expects.
OPENAI_DEFAULTS: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                                   "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}


def check_common(req: SamplingFields) -> None:
    """Rejects what the engine does not do, before any work starts."""
    if req.n < 1:
        raise APIError(f"n must be at least 1, got {req.n}", param="n")
    if req.max_tokens is not None and req.max_tokens < 0:
        raise APIError(f"max_tokens must be >= 0, got {req.max_tokens}", param="max_tokens")


def sampling_config(req: SamplingFields, max_tokens: int, logprobs: int | None,
                    defaults: Mapping[str, Any],
                    constraint: tuple[str, dict[str, Any]] | None = None) -> SamplingConfig:
    """The engine's config for one request (``ValueError`` from the core becomes a 400);
    ``defaults`` (the server's inference config) replace OpenAI's for fields left out;
    ``constraint`` is the structured output asked for and the request field
    that asked (:mod:`ferrolm.server.structured`), which errors name."""
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    openai = {**OPENAI_DEFAULTS, **defaults}
    try:
        return SamplingConfig(
            temperature=_or(req.temperature, openai["temperature"]),
            top_p=_or(req.top_p, openai["top_p"]),
            top_k=_or(req.top_k, openai["top_k"]),
            min_p=_or(req.min_p, openai["min_p"]),
            repetition_penalty=_or(req.repetition_penalty, openai["repetition_penalty"]),
            presence_penalty=_or(req.presence_penalty, openai["presence_penalty"]),
            frequency_penalty=_or(req.frequency_penalty, openai["frequency_penalty"]),
            max_tokens=max_tokens,
            seed=_seed(req.seed),
            stop=[s for s in stop if s],  # an empty stop string would end every request at once
            stop_token_ids=list(req.stop_token_ids or []),
            logprobs=logprobs,
            constraint=constraint[1] if constraint else None,
            logit_bias=req.logit_bias or {},  # JSON's string keys: SamplingConfig reads them
        )
    except ValueError as e:
        field = config_error_field(str(e))
        raise APIError(str(e), param=request_fields(constraint).get(field, field)) from None


def request_fields(constraint: tuple[str, dict[str, Any]] | None) -> dict[str, str]:
    """The request field behind each config field whose errors should name
    it: the constraint's comes from ``response_format``, ``guided_json``, ..."""
    return {"constraint": constraint[0]} if constraint else {}


def check_logprobs(value: int | None, name: str) -> None:
    if value is not None and not 0 <= value <= MAX_LOGPROBS:
        raise APIError(f"{name} must be between 0 and {MAX_LOGPROBS}, got {value}", param=name)


def _seed(seed: int | None) -> int | None:
    # OpenAI seeds are any integer (negative ones included); the engine's is a
    # u64. Wrapping keeps every seed valid and each one reproducible.
    return None if seed is None else seed % (1 << 64)


def _or(value, default):
    return default if value is None else value
