"""``LLM``: offline batch generation over the serving engine.

>>> from ferrolm import LLM, SamplingConfig
>>> llm = LLM("smollm2")                                                    # doctest: +SKIP
>>> outs = llm.generate(["Hello,", "The sky is"], SamplingConfig(max_tokens=16))  # doctest: +SKIP
>>> [o.text for o in outs]                                                  # doctest: +SKIP
"""

from __future__ import annotations

import os
import queue
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Union

from tqdm import tqdm

from ferrolm import hub, inference_config
from ferrolm._validate import of_type
from ferrolm.engine import AsyncEngine, RequestOutput
from ferrolm.sampling import SamplingConfig

# A runtime alias: `X | Y` would fail on Python 3.9.
Prompt = Union[str, Sequence[int]]


class LLM:
    """A model for batch generation: all prompts run together under the
    continuous-batching scheduler.

    Args:
        model: a model directory, a ``.gguf`` file or a short name (``"smollm2"``).
        config: an inference config file (a JSON file path or a dict, see
            ``ferrolm.inference_config``): engine settings, and the sampling
            defaults of ``generate``/``chat`` calls that pass none.
        **engine_args: ``AsyncEngine`` settings (``device``, ``max_seq_len``,
            ``num_pages``, ``max_num_seqs``, ``max_batch_tokens``, ``prefix_caching``,
            ...); one also set by ``config`` raises ``ValueError``.
    """

    def __init__(self, model: str | os.PathLike[str] = hub.DEFAULT_MODEL, *,
                 config: inference_config.ConfigSource | None = None, **engine_args: Any) -> None:
        settings = inference_config.load(config)
        if settings is not None:
            engine_args = settings.merged_args(engine_args)
        self.default_sampling = settings.sampling if settings is not None else SamplingConfig()
        self.engine = AsyncEngine(model, **engine_args)
        self.tokenizer = self.engine.tokenizer

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 sampling: SamplingConfig | Sequence[SamplingConfig] | None = None, *,
                 use_tqdm: bool | None = None) -> list[RequestOutput]:
        """Completes each prompt (text, or a list of token ids); returns the
        results in input order.

        Args:
            prompts: one prompt or a list of them.
            sampling: one ``SamplingConfig`` for all, or one per prompt
                (default: ``default_sampling``, the config's or ``SamplingConfig()``).
            use_tqdm: show a progress bar (default: only on a terminal).
        """
        if isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        configs = self._configs(sampling, len(prompts))
        ids = [self._encode(p) for p in prompts]
        return self._run(prompts, ids, configs, use_tqdm)

    def chat(self, conversations: Sequence[Mapping[str, Any]] | Sequence[Sequence[Mapping[str, Any]]],
             sampling: SamplingConfig | Sequence[SamplingConfig] | None = None, *,
             use_tqdm: bool | None = None, **template_args: Any) -> list[RequestOutput]:
        """Answers one conversation (a list of ``{"role", "content"}`` dicts)
        or a list of them, rendered with the model's chat template."""
        if conversations and isinstance(conversations[0], Mapping):
            conversations = [conversations]
        tokenizer = self._tokenizer()
        texts = [tokenizer.apply_chat_template(list(c), True, **template_args) for c in conversations]
        configs = self._configs(sampling, len(texts))
        ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
        return self._run(texts, ids, configs, use_tqdm)

    def _run(self, prompts: list[Any], ids: list[list[int]], configs: list[SamplingConfig],
             use_tqdm: bool | None) -> list[RequestOutput]:
        results = [RequestOutput(request_id=-1, prompt_token_ids=i) for i in ids]
        for r, p in zip(results, prompts):
            r.prompt = p if isinstance(p, str) else None
        inbox: queue.Queue[tuple[int, Any]] = queue.Queue()
        index: dict[int, int] = {}
        try:
            for i, (prompt, config) in enumerate(zip(ids, configs)):
                rid = self.engine.submit(prompt, config, lambda out, i=i: inbox.put((i, out)), stream=i)
                index[rid] = i
                results[i].request_id = rid
            show = sys.stderr.isatty() if use_tqdm is None else use_tqdm
            with tqdm(total=len(ids), desc="generating", unit="req", disable=not show, leave=False,
                      file=sys.stderr) as bar:
                pending = len(ids)
                while pending:
                    i, out = inbox.get()
                    results[i].add(out)
                    if out.kind != "token":
                        pending -= 1
                        bar.update(1)
        except BaseException:
            for rid in index:
                self.engine.abort(rid)
            raise
        return results

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self._tokenizer().encode(prompt)
        return list(of_type(prompt, "a prompt", Sequence, "a string or a list of token ids"))

    def _tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer files; pass prompts as lists of token ids")
        return self.tokenizer

    def _configs(self, sampling: SamplingConfig | Sequence[SamplingConfig] | None, n: int) -> list[SamplingConfig]:
        if sampling is None:
            return [self.default_sampling] * n
        if isinstance(sampling, SamplingConfig):
            return [sampling] * n
        configs = list(sampling)
        if len(configs) != n:
            raise ValueError(f"got {len(configs)} sampling configs for {n} prompts; pass one, or one per prompt")
        return [of_type(c, "sampling", SamplingConfig, "a SamplingConfig or a list of them") for c in configs]

    def stats(self) -> dict[str, int]:
        return self.engine.stats()

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
