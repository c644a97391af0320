"""The inference config file (MILI's JSON of engine, KV cache and sampling settings),
checked whole by the Rust core.

```json
{"inference": {"device": "cuda", "dtype": "float16", "max_batch_size": 64},
 "kv_cache": {"page_size": 16, "num_pages": 1024},
 "sampling": {"temperature": 1.0, "top_p": 0.95, "top_k": 50}}
```

``LLM(config=...)``, ``InferenceSession(config=...)`` and ``ferrolm serve
--config FILE`` take it. Every key is optional. ``inference`` also takes
``max_seq_len``, ``max_batch_tokens``, ``quantize`` and ``max_waiting``; ``kv_cache`` takes
``prefix_caching`` and ``dtype`` (``"f16"``/``"f32"``); ``sampling`` takes
any ``SamplingConfig`` field and supplies the defaults of requests that
bring none. An unknown key or a bad value raises ``ValueError`` naming it
(``invalid config field `kv_cache.page_size`: ...``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from ferrolm import _core
from ferrolm._validate import config_error
from ferrolm.sampling import SamplingConfig

ConfigSource = Union[str, "os.PathLike[str]", Mapping[str, Any]]

@dataclass(frozen=True)
class InferenceConfig:
    """A checked inference config: ``engine_args`` for ``AsyncEngine``/``LLM``,
    ``sampling`` (the full ``SamplingConfig``) and ``sampling_keys`` (the
    fields the file set, which override a caller's own defaults)."""

    engine_args: dict[str, Any] = field(default_factory=dict)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    sampling_keys: frozenset[str] = frozenset()

    @classmethod
    def load(cls, source: ConfigSource) -> InferenceConfig:
        """From a JSON file path or an already parsed dict."""
        if isinstance(source, Mapping):
            raw = dict(source)
            text = json.dumps(raw)
        elif isinstance(source, (str, os.PathLike)):
            try:
                with open(source, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                raise FileNotFoundError(f"inference config not found: {os.fspath(source)}") from None
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as e:
                raise config_error("inference config", f"{os.fspath(source)} is not valid JSON: {e}") from None
        else:
            raise ValueError(f"config must be a path to a JSON file or a dict, got {type(source).__name__}")
        # The core checks the file and names each setting after the argument it sets.
        checked = _core.inference_config(text)
        given = raw.get("sampling") or {}
        return cls(checked["settings"], SamplingConfig(**checked["sampling"]), frozenset(given))

    def merged_args(self, explicit: Mapping[str, Any]) -> dict[str, Any]:
        """``engine_args`` plus ``explicit`` arguments; a setting given both
        ways raises ``ValueError`` (which one was meant is not guessable)."""
        both = sorted(set(self.engine_args) & set(explicit))
        if both:
            raise ValueError(f"{', '.join(both)} set both by the inference config and as arguments; "
                             "remove one of them")
        return {**self.engine_args, **explicit}


def load(config: ConfigSource | InferenceConfig | None) -> InferenceConfig | None:
    """``InferenceConfig.load`` that passes None and loaded configs through."""
    if config is None or isinstance(config, InferenceConfig):
        return config
    return InferenceConfig.load(config)
