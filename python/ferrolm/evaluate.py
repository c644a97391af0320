"""Measuring a model: ``perplexity`` on a text and ``bench`` (prefill and decode speed).

>>> from ferrolm import perplexity
>>> r = perplexity("smollm2", file="tests/fixtures/text/sample.txt")      # doctest: +SKIP
>>> print(f"{r.perplexity:.2f} over {r.tokens} tokens")                     # doctest: +SKIP

The perplexity itself is computed by the Rust core (``ferrolm_core::perplexity``);
this module loads the model and tokenizer, shows a progress bar and times it.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Union

import numpy as np
from tqdm import tqdm

from ferrolm import _core, hub
from ferrolm._validate import integer, positive
from ferrolm.model import Transformer
from ferrolm.tokenizer import Tokenizer

# A runtime alias: `X | Y` would fail on Python 3.9.
ModelLike = Union[str, "os.PathLike[str]", Transformer]


@dataclass(frozen=True)
class PerplexityResult:
    """What :func:`perplexity` measured.

    Attributes:
        perplexity: ``exp(mean_nll)``.
        mean_nll: mean negative log-likelihood per scored token, in nats.
        tokens: tokens scored (every token of a window but its first).
        windows: windows of ``context`` tokens run.
        seconds: time spent in the model (loading and tokenizing excluded).
    """

    perplexity: float
    mean_nll: float
    tokens: int
    windows: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class BenchResult:
    """What :func:`bench` measured (medians over ``runs``).

    Attributes:
        prefill_tps: prompt tokens per second, the whole prompt in one forward pass.
        decode_tps: generated tokens per second, one token per forward pass.
        peak_rss: the process's peak resident memory in bytes (model load included).
    """

    prefill_tps: float
    decode_tps: float
    peak_rss: int
    prompt_tokens: int
    gen_tokens: int
    runs: int


def perplexity(
    model: ModelLike,
    text: str | None = None,
    *,
    file: str | os.PathLike[str] | None = None,
    tokens: list[int] | None = None,
    tokenizer: Tokenizer | None = None,
    context: int = 512,
    max_tokens: int | None = None,
    device: str | int | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
    progress: bool | None = None,
) -> PerplexityResult:
    """Perplexity of ``model`` on a text, in windows of ``context`` tokens.

    The tokens are cut into consecutive, non-overlapping windows; each runs
    from position 0 with an empty KV cache, and every token after a window's
    first is scored (llama.cpp's ``llama-perplexity`` without its half-window
    offset; HF's fixed-length recipe with ``stride == context``).

    Args:
        model: a model directory, a ``.gguf`` file, a short name (``"smollm2"``)
            or a loaded :class:`ferrolm.Transformer`.
        text: the text to score; or give ``file`` (read as UTF-8) or ``tokens``.
        tokens: token ids to score instead of a text.
        tokenizer: the tokenizer to encode ``text`` with (default: the model's;
            required for a loaded ``Transformer``). ``text`` is encoded with the
            tokenizer's special tokens (a leading BOS where the model adds one).
        context: tokens per window (at least 2, at most the model's ``max_seq_len``).
        max_tokens: score only the first ``max_tokens`` tokens (quick checks).
        device, dtype, quantize: where and how to load ``model`` when it is a
            path, as in :meth:`Transformer.from_pretrained`.
        progress: show a progress bar (default: only when stderr is a terminal).

    Raises:
        ValueError: no or several inputs, an empty text, fewer than 2 tokens,
            a bad ``context``; FileNotFoundError: a missing file or model.
    """
    context = integer(context, "context", minimum=2)
    if max_tokens is not None:
        max_tokens = integer(max_tokens, "max_tokens", minimum=2)
    if sum(x is not None for x in (text, file, tokens)) != 1:
        raise ValueError("pass exactly one of text, file= or tokens=")
    if file is not None:
        text = _read(file)
    if text is not None and not text.strip():
        raise ValueError(f"{'file ' + os.fspath(file) if file is not None else 'the text'} is empty; "
                         "pass some text to score")

    core, path = _load(model, device, dtype, quantize, max_seq_len=None)
    if tokens is None:
        if tokenizer is None:
            tokenizer = _model_tokenizer(path)
        tokens = tokenizer.encode(text)
    tokens = [int(t) for t in tokens][:max_tokens]

    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(desc="perplexity", unit="tok", disable=not show, leave=False, file=sys.stderr) as bar:

        def report(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        start = time.perf_counter()
        ppl, nll, scored, windows = _core.perplexity(core, tokens, context, report if show else None)
        seconds = time.perf_counter() - start
    return PerplexityResult(perplexity=ppl, mean_nll=nll, tokens=scored, windows=windows, seconds=seconds)


def bench(
    model: ModelLike,
    prompt_tokens: int = 128,
    gen_tokens: int = 128,
    runs: int = 3,
    *,
    device: str | int | None = None,
    dtype: str | None = None,
    quantize: str | None = None,
) -> BenchResult:
    """Prefill and decode speed, measured as ``benchmarks/cpu_bench.py`` measures ferrolm.

    Each run feeds a fixed ``prompt_tokens``-token prompt in one forward pass
    from position 0 (prefill), then generates ``gen_tokens`` tokens greedily,
    one forward pass per token continuing from the KV cache, end of sequence
    ignored (decode). Reports medians over ``runs`` and the peak RSS of this
    process (``ru_maxrss``: model loading and everything before count too).

    Args:
        model: a model directory, a ``.gguf`` file, a short name or a loaded
            :class:`ferrolm.Transformer` (whose ``max_seq_len`` must hold
            ``prompt_tokens + gen_tokens``).
        device, dtype, quantize: as in :meth:`Transformer.from_pretrained` (paths only).
    """
    prompt_len = positive(prompt_tokens, "prompt_tokens")
    gen = positive(gen_tokens, "gen_tokens")
    runs = positive(runs, "runs")
    core, _ = _load(model, device, dtype, quantize, max_seq_len=prompt_len + gen + 8)
    vocab = _vocab_size(core)
    prompt = [((i * 7919) % 20000 + 100) % vocab for i in range(prompt_len)]  # cpu_bench.py's prompt
    prefill, decode = [], []
    for _ in range(runs):
        t = time.perf_counter()
        logits = core.forward([prompt], 0, 1)  # the last position only, as generation needs
        prefill.append(prompt_len / (time.perf_counter() - t))
        tok = int(np.argmax(logits[0, -1]))
        t = time.perf_counter()
        for i in range(gen):
            tok = int(np.argmax(core.forward([[tok]], prompt_len + i)[0, -1]))
        decode.append(gen / (time.perf_counter() - t))
    import resource  # Unix only

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return BenchResult(prefill_tps=statistics.median(prefill), decode_tps=statistics.median(decode),
                       peak_rss=rss, prompt_tokens=prompt_len, gen_tokens=gen, runs=runs)


def _load(model: ModelLike, device: str | int | None, dtype: str | None, quantize: str | None,
          max_seq_len: int | None) -> tuple[_core.Model, os.PathLike[str] | None]:
    """The core model to run, and its path when it was loaded here."""
    if isinstance(model, Transformer):
        if device is not None or dtype is not None or quantize is not None:
            raise ValueError("device, dtype and quantize apply only when model is a path; "
                             "this model is already loaded")
        return model._core_model(), None
    path = hub.resolve(model)
    loaded = Transformer.from_pretrained(path, device="cpu" if device is None else device,
                                         max_seq_len=max_seq_len, dtype=dtype, quantize=quantize)
    return loaded._core_model(), path


def _model_tokenizer(path: os.PathLike[str] | None) -> Tokenizer:
    if path is None:
        raise ValueError("a loaded Transformer has no tokenizer; pass tokenizer= or tokens=")
    try:
        return Tokenizer.from_pretrained(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; this model has no tokenizer to encode the text with "
                                "(in Python, pass tokenizer= or tokens=)") from None


def _read(file: str | os.PathLike[str]) -> str:
    path = os.fspath(file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _vocab_size(core: _core.Model) -> int:
    return int(core.config["vocab_size"])
