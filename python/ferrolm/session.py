"""``InferenceSession``: the session API's ``QwenInferenceSession``, under both names.

A session holds one model and one conversation. Each ``generate`` call is a
chat turn: the conversation is rendered with the model's chat template and
only the new part is computed (the KV cache of earlier turns is kept).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

from ferrolm import _core, hub, inference_config
from ferrolm._device import core_device
from ferrolm._validate import of_type
from ferrolm.sampling import SamplingConfig


class InferenceSession:
    """Talk to a model.

    One session is one conversation. Threads may share it: calls take turns
    (a streamed turn holds the session from its first piece until it ends or
    the iterator is closed); to serve many users at once use ``LLM`` or
    ``AsyncEngine``.

    Args:
        model_path: a model directory, a ``.gguf`` file, or a short name such
            as ``"smollm2"`` (pulled on first use).
        device: ``"cpu"``, ``"cuda"``/``"cuda:N"`` or an integer GPU index.
        max_seq_len: longest conversation in tokens (default: the model's context length).
        dtype: on a GPU ``"bfloat16"`` (default) or ``"float32"`` (exact); on the
            CPU unset (weights as stored) or ``"float32"`` (exact).
        quantize: ``"q8_0"`` or ``"q4_k"``: quantize an HF checkpoint at load (CPU);
            ``"fp8"``: the linear layers as FP8 E4M3 (CPU and GPU).
        kv_dtype: CPU KV cache precision, ``"f16"`` or ``"f32"`` (default: f16 for
            quantized models, f32 otherwise).
        config: an inference config file (a JSON file path or a dict, see
            ``ferrolm.inference_config``): device, dtype, KV pages, and the
            sampling defaults of turns that pass no ``config``. A setting given
            both here and as an argument raises ``ValueError``.

    Raises:
        FileNotFoundError: the model does not exist.
        ValueError: the model files are invalid or unsupported.
        RuntimeError: the device is not available.
    """

    def __init__(self, model_path: str | os.PathLike[str] = hub.DEFAULT_MODEL,
                 device: str | int | None = None, max_seq_len: int | None = None, dtype: str | None = None,
                 quantize: str | None = None, kv_dtype: str | None = None, *,
                 config: inference_config.ConfigSource | None = None) -> None:
        self._core: _core.Session | None = None
        explicit = {k: v for k, v in (("device", device), ("max_seq_len", max_seq_len), ("dtype", dtype),
                                      ("quantize", quantize), ("kv_dtype", kv_dtype)) if v is not None}
        settings = inference_config.load(config)
        args = settings.merged_args(explicit) if settings is not None else explicit
        # One conversation runs at a time: the config's max_batch_size and max_waiting do not apply.
        args.pop("max_num_seqs", None)
        args.pop("max_waiting", None)
        self.default_sampling = settings.sampling if settings is not None else SamplingConfig()
        path = hub.resolve(model_path)
        # Threads sharing one session take turns: a whole turn (a stream
        # until it ends or is closed) holds this lock, so no turn cuts another.
        self._turn = threading.RLock()
        self._core = _core.Session.load(
            str(path), core_device(args.pop("device", "cpu")), args.pop("max_seq_len", None), args.pop("dtype", None),
            args.pop("quantize", None), args.pop("kv_dtype", None), **args,
        )
        self.model_path = str(path)

    def generate(self, prompt: str, config: SamplingConfig | None = None,
                 system_prompt: str | None = None, stream: bool = False) -> str | Iterator[str]:
        """Answers ``prompt`` as the next turn of the conversation.

        Args:
            prompt: the user's message.
            config: sampling settings (default: ``default_sampling``, from the inference
                config, else ``SamplingConfig()``).
            system_prompt: a system prompt for this turn only (see ``set_system_prompt``).
            stream: return an iterator of text pieces as they are produced.
        """
        of_type(prompt, "prompt", str, "a string")
        sampling = self._sampling(config)
        start = lambda core: core.start_turn(prompt, sampling, system_prompt)  # noqa: E731
        return self._pieces(start) if stream else self._whole(start)

    def complete(self, text: str, config: SamplingConfig | None = None,
                 stream: bool = False) -> str | Iterator[str]:
        """Continues ``text`` as is (no chat template, not part of the conversation)."""
        of_type(text, "text", str, "a string")
        sampling = self._sampling(config)
        start = lambda core: core.start_completion(text, sampling)  # noqa: E731
        return self._pieces(start) if stream else self._whole(start)

    def set_system_prompt(self, system_prompt: str | None) -> None:
        """Sets the system prompt of every later turn (None removes it)."""
        with self._turn:
            self._session().set_system_prompt(system_prompt)

    def reset_conversation(self) -> None:
        """Forgets the conversation (a shared prefix such as the system prompt stays cached)."""
        with self._turn:
            self._session().reset()

    @property
    def history(self) -> list[dict[str, str]]:
        """The conversation so far as ``{"role", "content"}`` messages."""
        return [{"role": r, "content": c} for r, c in self._session().history()]

    def last_usage(self) -> dict[str, Any] | None:
        """Token counts and finish reason of the last finished turn."""
        last = self._session().last_turn()
        if last is None:
            return None
        _, finish, prompt, cached, completion = last
        return {"finish_reason": finish, "prompt_tokens": prompt, "cached_tokens": cached,
                "completion_tokens": completion}

    def last_logprobs(self) -> list[dict[str, Any]]:
        """Log-probabilities of the last turn's tokens (needs ``SamplingConfig(logprobs=N)``).

        One entry per generated token: ``{"token_id", "logprob", "top_logprobs":
        [{"token_id", "logprob"}, ...]}`` with the N most likely alternatives.
        """
        return [
            {"token_id": t, "logprob": lp,
             "top_logprobs": [{"token_id": a, "logprob": alp} for a, alp in top]}
            for t, lp, top in self._session().last_logprobs()
        ]

    def get_model_info(self) -> dict[str, Any]:
        """Context length, vocabulary size, architecture, dtype, parameter count, ..."""
        info = self._session().model_info()
        info["model_path"] = self.model_path
        return info

    def close(self) -> None:
        """Frees the model and its cache; the session cannot be used afterwards."""
        self._core = None

    def _whole(self, start) -> str:
        with self._turn:
            core = self._session()
            start(core)
            return core.finish_turn()

    def _pieces(self, start) -> Iterator[str]:
        # A generator: the turn starts (and takes the lock) at the first piece asked for.
        with self._turn:
            core = self._session()
            start(core)
            while (piece := core.next_piece()) is not None:
                yield piece

    def _session(self) -> _core.Session:
        if self._core is None:
            raise RuntimeError("this InferenceSession is closed; create a new one")
        return self._core

    def __enter__(self) -> InferenceSession:
        return self

    def _sampling(self, config: SamplingConfig | None) -> SamplingConfig:
        return _config(config, self.default_sampling)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._core is None else self.model_path
        return f"InferenceSession({state})"


QwenInferenceSession = InferenceSession


def generate_text(model_path: str | os.PathLike[str], prompt: str,
                  config: SamplingConfig | None = None, device: str | int = "cpu") -> str:
    """One-off generation: opens a session, answers ``prompt``, closes it."""
    with InferenceSession(model_path, device=device) as session:
        return session.generate(prompt, config)


def _config(config: SamplingConfig | None, default: SamplingConfig) -> SamplingConfig:
    if config is None:
        return default
    return of_type(config, "config", SamplingConfig, "a SamplingConfig")



