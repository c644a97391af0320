"""The API of Meta's llama ``generation.py``: ``Llama.build(...).generate()``,
``text_completion`` and ``chat_completion``, over ferrolm's model and tokenizer.
"""

from __future__ import annotations

import os
from typing import Any, TypedDict

from ferrolm import hub
from ferrolm.model import Transformer
from ferrolm.tokenizer import Tokenizer


class Message(TypedDict):
    role: str
    content: str


Dialog = list[Message]


class Llama:
    """A model and its tokenizer, as returned by :meth:`Llama.build`."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer

    @staticmethod
    def build(ckpt_dir: str | os.PathLike[str], tokenizer_path: str | os.PathLike[str] | None = None,
              max_seq_len: int = 2048, max_batch_size: int = 1, device: str | int = "cpu",
              seed: int | None = None, dtype: str | None = None) -> Llama:
        """Loads a model directory, ``.gguf`` file or short name, and its tokenizer.

        Args:
            ckpt_dir: the model (an HF directory, a ``.gguf`` file, or e.g. ``"smollm2"``).
            tokenizer_path: where the tokenizer is, if not with the model.
            max_seq_len: longest prompt plus generation, in tokens.
            max_batch_size: most prompts per call.
            device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a GPU index.
            seed: default seed of the sampling calls.
            dtype: on a GPU ``"bfloat16"`` (default) or ``"float32"`` (exact).
        """
        path = hub.resolve(ckpt_dir)
        model = Transformer.from_pretrained(path, device=device, max_seq_len=max_seq_len,
                                            max_batch_size=max_batch_size, dtype=dtype)
        tokenizer = Tokenizer.from_pretrained(tokenizer_path if tokenizer_path is not None else path)
        llama = Llama(model, tokenizer)
        llama._seed = seed
        return llama

    _seed: int | None = None

    def generate(self, prompt_tokens: list[list[int]], max_gen_len: int, temperature: float = 0.6,
                 top_p: float = 0.9, logprobs: bool = False, echo: bool = False,
                 ) -> tuple[list[list[int]], list[list[float]] | None]:
        """Continues token prompts, as Meta's ``Llama.generate``.

        Returns ``(tokens, logprobs)``: per prompt the new tokens (the prompt
        too with ``echo``) and, with ``logprobs``, each token's log-probability
        (``None`` otherwise). Generation stops at an end-of-sequence token.
        """
        out = self.model._generate(prompt_tokens, max_gen_len, temperature, top_p, self._seed,
                                   prompt_logprobs=logprobs and echo)
        tokens, probs = [], []
        for prompt, (new, new_lp, prompt_lp) in zip(prompt_tokens, out):
            tokens.append((list(prompt) if echo else []) + new)
            probs.append((prompt_lp if echo and prompt_lp is not None else []) + new_lp)
        return tokens, (probs if logprobs else None)

    def text_completion(self, prompts: list[str], temperature: float = 0.6, top_p: float = 0.9,
                        max_gen_len: int | None = None, logprobs: bool = False,
                        echo: bool = False) -> list[dict[str, Any]]:
        """Completes each text prompt; returns ``[{"generation": str, ...}]``."""
        prompt_tokens = [self.tokenizer.encode(p, add_special_tokens=True) for p in prompts]
        tokens, probs = self.generate(prompt_tokens, self._max_gen_len(max_gen_len), temperature,
                                      top_p, logprobs, echo)
        return [self._result(t, probs[i] if probs else None) for i, t in enumerate(tokens)]

    def chat_completion(self, dialogs: list[Dialog], temperature: float = 0.6, top_p: float = 0.9,
                        max_gen_len: int | None = None, logprobs: bool = False,
                        ) -> list[dict[str, Any]]:
        """Answers each dialog with the model's chat template; returns
        ``[{"generation": {"role": "assistant", "content": str}, ...}]``."""
        prompt_tokens = [
            self.tokenizer.encode(self.tokenizer.apply_chat_template(d, add_generation_prompt=True),
                                  add_special_tokens=False)
            for d in dialogs
        ]
        tokens, probs = self.generate(prompt_tokens, self._max_gen_len(max_gen_len), temperature,
                                      top_p, logprobs)
        results = []
        for i, t in enumerate(tokens):
            r = self._result(t, probs[i] if probs else None)
            r["generation"] = {"role": "assistant", "content": r["generation"]}
            results.append(r)
        return results

    def _max_gen_len(self, max_gen_len: int | None) -> int:
        return self.model.params.max_seq_len - 1 if max_gen_len is None else max_gen_len

    def _result(self, tokens: list[int], logprobs: list[float] | None) -> dict[str, Any]:
        result: dict[str, Any] = {"generation": self.tokenizer.decode(tokens)}
        if logprobs is not None:
            result["tokens"] = [self.tokenizer.decode([t], skip_special_tokens=False) for t in tokens]
            result["logprobs"] = logprobs
        return result
