"""``Qwen3Config``: MILI's model configuration, which is ferrolm's ``ModelArgs``
(the core's typed ``Config``) with MILI's defaults and extra fields.

>>> config = Qwen3Config(hidden_size=1024, num_attention_heads=16, num_hidden_layers=2)
>>> config.head_dim
64
>>> Qwen3Config.from_dict(config.to_dict()) == config
True
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from ferrolm import _core, hub
from ferrolm._validate import config_error, of_type
from ferrolm.model import ModelArgs

# MILI-only fields: the core does not need them, so they are checked here.
_MILI_FIELDS = ("hidden_act", "attention_dropout", "quantization_config")
# Fields whose HF key is their own name: a dict that leaves them out gets
# MILI's default (as MILI's ``from_dict``), not the core's Llama one.
_PLAIN_DEFAULTS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "vocab_size", "max_position_embeddings", "rms_norm_eps")


@dataclass
class Qwen3Config(ModelArgs):
    """Configuration of a Qwen3 model (MILI's ``Qwen3Config``), validated by the Rust core.

    Every ``ModelArgs`` field is available too (``architecture``,
    ``max_seq_len``, ``tie_word_embeddings``, ...). ``head_dim`` is
    ``hidden_size // num_attention_heads`` unless given (Qwen3 checkpoints
    give it). ``max_seq_len`` defaults to ``max_position_embeddings``.
    ``quantization_config={"quant_method": "fp8"}`` makes models built from
    this config load their weights as FP8. Invalid values raise
    ``ValueError`` naming the field.
    """

    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 8
    vocab_size: int = 150000
    max_position_embeddings: int = 32768
    max_seq_len: int | None = None  # type: ignore[assignment]
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    architecture: str = "Qwen3ForCausalLM"
    hidden_act: str = "silu"
    attention_dropout: float = 0.0
    quantization_config: dict | None = None

    def __post_init__(self) -> None:
        if self.max_seq_len is None:
            self.max_seq_len = self.max_position_embeddings
        if isinstance(self.attention_dropout, bool) or not isinstance(self.attention_dropout, (int, float)) \
                or not 0.0 <= self.attention_dropout < 1.0:
            raise config_error("attention_dropout", f"must be in [0, 1), got {self.attention_dropout!r}")
        self.quantize  # noqa: B018 - validates quantization_config
        super().__post_init__()
        # The derived head_dim, as the core computed it.
        self.head_dim = self._canonical()["head_dim"]

    @property
    def quantize(self) -> str | None:
        """The ``quantize=`` choice ``quantization_config`` asks for (``"fp8"`` or None)."""
        q = self.quantization_config
        if q is None:
            return None
        method = q.get("quant_method") if isinstance(q, dict) else None
        if method != "fp8":
            raise config_error("quantization_config", f"only {{'quant_method': 'fp8'}} is supported, got {q!r}")
        return "fp8"

    def to_dict(self) -> dict[str, Any]:
        """Every field (HF ``config.json`` keys, plus ``architecture`` and ``max_seq_len``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> Qwen3Config:
        """From a dict of fields or an HF ``config.json`` dict; missing keys keep
        MILI's defaults and keys ferrolm does not use are ignored."""
        d = dict(of_type(config_dict, "config_dict", dict, "a dict"))
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key in _PLAIN_DEFAULTS:
            d.setdefault(key, defaults[key])
        if "architecture" not in d and "architectures" not in d:
            d["architecture"] = defaults["architecture"]
        canonical = _core.canonical_config(d)
        if "max_seq_len" not in d:
            canonical["max_seq_len"] = canonical["max_position_embeddings"]
        if not canonical["eos_token_id"]:  # the core's "none" is []; keep the caller's spelling
            canonical["eos_token_id"] = d.get("eos_token_id")
        extra = {k: d[k] for k in (*_MILI_FIELDS, "max_batch_size") if k in d}
        return cls(**canonical, **extra)

    @classmethod
    def from_pretrained(cls, model_name: str | os.PathLike[str]) -> Qwen3Config:
        """The config of a local model directory, a ``.gguf`` file or a short name
        (``"smollm2"``). There is no model hub here: hub ids such as
        ``"Qwen/Qwen3-0.6B"`` raise ``FileNotFoundError`` saying so."""
        path = hub.resolve(model_name)
        config = cls(**_core.config_from_pretrained(str(path)))
        quant = _quantization_config(path)
        return dataclasses.replace(config, quantization_config=quant) if quant else config


def _quantization_config(path: os.PathLike[str]) -> dict | None:
    """An HF ``config.json``'s ``quantization_config`` if it asks for FP8."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as f:
        q = json.load(f).get("quantization_config")
    return q if isinstance(q, dict) and q.get("quant_method") == "fp8" else None
