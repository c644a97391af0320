"""``SamplingConfig``: the session API's sampling knobs, checked by the Rust core."""

from __future__ import annotations

import dataclasses
import json
import operator
from dataclasses import dataclass, field
from typing import Any

from ferrolm import _core
from ferrolm._validate import config_error, config_number

MAX_SCHEMA_DEPTH = _core.MAX_SCHEMA_DEPTH  # the core's bound on a JSON schema's nesting
MAX_CONSTRAINT_NESTING = MAX_SCHEMA_DEPTH + 1  # the constraint's dict holds the schema
_FLOATS = ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty")
_INTS = ("top_k", "penalty_window", "max_tokens", "reasoning_mode")


@dataclass
class SamplingConfig:
    """How to pick tokens and when to stop (defaults as in the session API).

    Args:
        temperature: softmax temperature; 0.0 is greedy.
        top_k: keep only the k most likely tokens (0 disables).
        top_p: nucleus sampling: smallest set of tokens with this much probability.
        min_p: drop tokens less likely than ``min_p`` times the most likely one.
        repetition_penalty: > 1 discourages tokens seen in the last ``penalty_window`` tokens.
        frequency_penalty: subtracted per earlier occurrence of a token.
        presence_penalty: subtracted once from any token already present.
        penalty_window: how many recent tokens (prompt included) the penalties consider.
        max_tokens: most new tokens.
        seed: fixes the random draws (None: a fresh seed each time).
        reasoning_mode: 1 lets a reasoning model (Qwen3) think first; 0 turns thinking off.
        stop: strings that end generation (not included in the output).
        stop_token_ids: token ids that end generation.
        logprobs: report this many top alternatives per token (None: no log-probabilities).
        ignore_eos: keep going past the model's end-of-sequence tokens (benchmarks);
            ``stop`` and ``stop_token_ids`` still apply.
        constraint: structured output, what the text must match (None: anything), one of
            ``{"json_schema": {...}}``, ``{"regex": "[0-9]+"}``, ``{"choice": ["yes", "no"]}``,
            ``{"grammar": "start: ..."}`` (llguidance's Lark syntax),
            ``{"gbnf": "root ::= ..."}`` (llama.cpp's GBNF); compiled when the
            request is submitted (a bad one raises ``ValueError``). Every pick is masked to
            the tokens it allows, before penalties, top-k/top-p/min-p and temperature.
        logit_bias: token id -> bias in [-100, 100] added to its logit after the constraint's
            mask and before everything else (OpenAI's ``logit_bias``; ids may be given as
            strings, as JSON sends them).

    Out-of-range values raise ``ValueError`` naming the field.
    """

    temperature: float = 0.6
    top_k: int = 20
    top_p: float = 0.95
    min_p: float = 0.05
    repetition_penalty: float = 1.1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_window: int = 64
    max_tokens: int = 512
    seed: int | None = None
    reasoning_mode: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: int | None = None
    ignore_eos: bool = False
    constraint: dict[str, Any] | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in _FLOATS:
            setattr(self, name, config_number(getattr(self, name), name, float))
        for name in _INTS:
            setattr(self, name, config_number(getattr(self, name), name, int, minimum=0))
        for name in ("seed", "logprobs"):
            if getattr(self, name) is not None:
                setattr(self, name, config_number(getattr(self, name), name, int, minimum=0))
        if self.seed is not None and self.seed >= 2**64:
            raise config_error("seed", f"must be < 2**64, got {self.seed}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not all(isinstance(s, str) for s in self.stop):
            raise config_error("stop", "expected a string or a list of strings")
        self.stop = list(self.stop)
        self.stop_token_ids = [config_number(t, "stop_token_ids", int, minimum=0) for t in self.stop_token_ids]
        if self.constraint is not None and not isinstance(self.constraint, dict):
            raise config_error("constraint", "expected a dict such as {'regex': '[0-9]+'} or None")
        if _nesting(self.constraint) > MAX_CONSTRAINT_NESTING:
            # Checked here too: copying the config (to_dict) recurses as deep as it nests.
            raise config_error("constraint", f"the JSON schema is nested deeper than {MAX_SCHEMA_DEPTH} levels")
        self.logit_bias = _logit_bias(self.logit_bias)
        if not isinstance(self.ignore_eos, bool):
            raise config_error("ignore_eos", f"expected True or False, got {self.ignore_eos!r}")
        _core.validate_sampling(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def _logit_bias(bias: Any) -> dict[int, float]:
    """``{token id: bias}`` with int ids (JSON's string keys such as ``"50256"`` too)."""
    if not isinstance(bias, dict):
        raise config_error("logit_bias", f"expected a dict of token id -> bias, got {bias!r}")
    out = {}
    for key, value in bias.items():
        try:
            token = int(key) if isinstance(key, str) and key.isdecimal() else operator.index(key)
        except TypeError:
            token = -1
        if isinstance(key, bool) or token < 0:
            raise config_error("logit_bias", f"keys must be token ids (integers, or integers as strings), got {key!r}")
        out[token] = config_number(value, "logit_bias", float)
    return out


def _nesting(value: Any) -> int:
    """How deeply ``value`` nests dicts and lists, counted without recursion
    (and no further than a level past the bound)."""
    deepest, stack = 0, [(value, 0)]
    while stack and deepest <= MAX_CONSTRAINT_NESTING:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, depth + 1)
            stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest
