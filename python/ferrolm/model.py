"""The model API of Meta's llama ``model.py``: ``ModelArgs`` and ``Transformer``.

Everything runs in the Rust core (``ferrolm._core``); this module only
normalises arguments and documents them. The configuration is validated by
the core, so ``ModelArgs`` and the engine can never disagree about a model.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from ferrolm import _core, hub
from ferrolm._device import core_device
from ferrolm._validate import integers, non_negative, positive

Tokens = Union[list[list[int]], np.ndarray]


@dataclass
class ModelArgs:
    """Hyper-parameters of a decoder-only transformer (``Config`` in the Rust core).

    Field names follow HF ``config.json``; defaults are the Llama-7B-like ones
    of the Llama API's ``ModelArgs``. ``num_key_value_heads=None`` means equal to
    ``num_attention_heads`` (multi-head attention) and ``head_dim=None`` means
    ``hidden_size // num_attention_heads``. Invalid values raise ``ValueError``
    naming the field.

    Args:
        architecture: HF architecture name: ``LlamaForCausalLM``,
            ``MistralForCausalLM``, ``Qwen2ForCausalLM`` or ``Qwen3ForCausalLM``.
        max_seq_len: the longest sequence (prompt plus generation) the KV cache holds.
        max_batch_size: sequences processed at once (KV cache slots).
        rope_scaling: ``None``, ``{"rope_type": "linear", "factor": f}`` or
            ``{"rope_type": "llama3", "factor", "low_freq_factor",
            "high_freq_factor", "original_max_position_embeddings"}``.
        eos_token_id: an id or a list of ids that end generation.
    """

    hidden_size: int = 4096
    vocab_size: int = 32000
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    max_seq_len: int = 2048
    rms_norm_eps: float = 1e-6
    architecture: str = "LlamaForCausalLM"
    intermediate_size: int = 11008
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    max_batch_size: int = 1
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = field(default=None)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        positive(self.max_batch_size, "max_batch_size")
        self._canonical()  # validated by the core; raises ValueError naming the field

    def _canonical(self) -> dict[str, Any]:
        """The config in the core's canonical form (validated)."""
        return _core.canonical_config(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelArgs:
        """Builds args from a dict of ``ModelArgs`` fields or an HF ``config.json`` dict.

        HF-only keys (``architectures``, ``rope_parameters``, ``torch_dtype``, ...)
        are understood; keys ferrolm does not use are ignored.
        """
        canonical = _core.canonical_config(d)
        if "max_seq_len" not in d:
            canonical["max_seq_len"] = canonical["max_position_embeddings"]
        if "max_batch_size" in d:
            canonical["max_batch_size"] = d["max_batch_size"]
        return cls(**canonical)

    @classmethod
    def from_config_file(cls, path: str | os.PathLike[str]) -> ModelArgs:
        """Reads an HF ``config.json`` (``FileNotFoundError`` if it does not exist)."""
        return cls(**_core.config_from_file(os.fspath(path)))


class Transformer:
    """A decoder-only language model (Llama, Mistral, Qwen2, Qwen3) run by the Rust core.

    ``Transformer(args)`` starts with freshly initialised weights (drawn on
    first use from ``seed``, as HF initialises them); load real ones with
    :meth:`load_state_dict`, or use :meth:`from_pretrained`. The KV cache
    holds ``args.max_batch_size`` sequences of up to ``args.max_seq_len``
    tokens, so ``forward(tokens, start_pos)`` continues where the previous
    call stopped, as in Meta's reference.
    """

    def __init__(self, args: ModelArgs, *, seed: int = 0) -> None:
        self.params = args
        self._seed = seed
        self._model: _core.Model | None = None

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        device: str | int = "cpu",
        max_seq_len: int | None = None,
        max_batch_size: int = 1,
        dtype: str | None = None,
        quantize: str | None = None,
        kv_dtype: str | None = None,
    ) -> Transformer:
        """Loads an HF model directory (``config.json`` + safetensors), a ``.gguf`` file,
        or a short name such as ``"smollm2"`` (pulled on first use).

        Args:
            path: the model.
            device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a GPU index (RuntimeError
                saying what is missing when no usable GPU is found).
            max_seq_len: KV cache capacity per sequence (default: the model's
                ``max_position_embeddings``).
            max_batch_size: sequences per forward call.
            dtype: on a GPU, ``"bfloat16"`` (default: weights in bf16, f32
                accumulation) or ``"float32"`` (exact). On the CPU, unset (default:
                weights stay as stored, quantized or half, against 8-bit activations,
                f16 KV cache) or ``"float32"`` (the exact dequantized path).
            quantize: ``"q8_0"`` or ``"q4_k"`` quantizes an f32/f16/bf16 checkpoint
                at load so it runs on the CPU's integer kernels (CPU only).
                ``"fp8"`` stores every layer's linear weights as FP8 E4M3 with one
                scale per 32 weights of a row (embeddings and the head stay as stored);
                the CPU multiplies them against f32 activations, a GPU widens
                them to ``dtype`` at load.
            kv_dtype: CPU KV cache precision, ``"f16"`` or ``"f32"`` (default: f16
                for quantized models, f32 otherwise).
        """
        model = _core.Model.from_pretrained(
            str(hub.resolve(path)), core_device(device),
            None if max_seq_len is None else positive(max_seq_len, "max_seq_len"),
            positive(max_batch_size, "max_batch_size"),
            dtype, quantize, kv_dtype,
        )
        self = cls(ModelArgs(**model.config, max_batch_size=max_batch_size))
        self._model = model
        return self

    def eval(self) -> Transformer:
        """No-op kept for PyTorch familiarity (the engine is always in inference mode)."""
        return self

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> None:
        """Loads weights keyed by HF tensor names (numpy arrays or array-likes).

        With ``strict`` every parameter must be given; unknown names and wrong
        shapes always raise ``ValueError`` naming the tensor, and a failed load
        leaves the model unchanged.
        """
        state = {str(k): np.ascontiguousarray(v, dtype=np.float32) for k, v in state_dict.items()}
        if self._model is None and strict:
            self._model = _core.Model.from_state_dict(
                self.params.to_dict(), state, self.params.max_batch_size
            )
        else:
            self._core_model().load_state_dict(state, strict)

    def forward(self, tokens: Tokens, start_pos: int = 0, *, logits_to_keep: int = 0) -> np.ndarray:
        """Logits of every position, float32 ``[batch, seq, vocab]``.

        Args:
            tokens: equal-length token sequences (a list of lists or a 2-D int array).
            start_pos: position of the first token; earlier positions come from
                the KV cache filled by previous calls.
            logits_to_keep: as in HF, only the last N positions' logits
                (``[batch, N, vocab]``; the head runs on those rows only);
                0 (default) keeps all.
        """
        return self._core_model().forward(_token_lists(tokens), non_negative(start_pos, "start_pos"),
                                          non_negative(logits_to_keep, "logits_to_keep"))

    __call__ = forward

    def generate(
        self,
        prompt_tokens: Tokens,
        max_gen_len: int,
        temperature: float = 0.6,
        top_p: float = 0.9,
        seed: int | None = None,
    ) -> list[list[int]]:
        """Continues each prompt; returns only the new tokens of each.

        Generation stops at an end-of-sequence token (not included), after
        ``max_gen_len`` tokens or when ``max_seq_len`` is reached.
        ``temperature=0`` is greedy; ``seed`` makes sampling reproducible.
        """
        return [tokens for tokens, _, _ in self._generate(prompt_tokens, max_gen_len, temperature, top_p, seed)]

    def _generate(self, prompt_tokens: Tokens, max_gen_len: int, temperature: float, top_p: float,
                  seed: int | None, prompt_logprobs: bool = False,
                  ) -> list[tuple[list[int], list[float], list[float] | None]]:
        """Per prompt: new tokens, their log-probabilities, and the prompt's if asked."""
        return self._core_model().generate(
            _token_lists(prompt_tokens), non_negative(max_gen_len, "max_gen_len"), float(temperature),
            float(top_p), None if seed is None else non_negative(seed, "seed"), prompt_logprobs,
        )

    def _core_model(self) -> _core.Model:
        if self._model is None:
            self._model = _core.Model.random(
                self.params.to_dict(), self._seed, self.params.max_batch_size
            )
        return self._model

    def __repr__(self) -> str:
        p = self.params
        return (f"Transformer({p.architecture}, layers={p.num_hidden_layers}, "
                f"hidden={p.hidden_size}, vocab={p.vocab_size})")


def create_transformer_from_config(
    config_path: str | os.PathLike[str], max_seq_len: int | None = None
) -> Transformer:
    """A ``Transformer`` shaped by an HF ``config.json`` (weights freshly initialised)."""
    args = ModelArgs.from_config_file(config_path)
    if max_seq_len is not None:
        args = dataclasses.replace(args, max_seq_len=max_seq_len)
    return Transformer(args)


def _token_lists(tokens: Tokens) -> list[list[int]]:
    """Normalises token input to a list of int lists (the core checks ids and lengths)."""
    if isinstance(tokens, np.ndarray):
        if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"tokens must be a 2-D integer array, got {tokens.dtype} {tokens.shape}")
        return tokens.tolist()
    if not isinstance(tokens, (list, tuple)) or not all(isinstance(s, (list, tuple)) for s in tokens):
        raise ValueError("tokens must be a list of token lists, e.g. [[1, 2, 3]]")
    return [integers(seq, f"tokens[{i}]") for i, seq in enumerate(tokens)]
