"""``AsyncEngine``: the Rust serving engine for Python, streaming to threads and asyncio.

The engine runs on its own Rust thread (without the GIL). One pump thread
here waits for its outputs and hands each one to whoever is waiting for
that request: a ``queue.Queue`` for blocking callers, an ``asyncio.Queue``
(through ``call_soon_threadsafe``) for coroutines. The server, ``LLM`` and
benchmarks all use this one class.

>>> engine = AsyncEngine("smollm2")                                   # doctest: +SKIP
>>> ids = engine.tokenizer.encode("Once upon a time")                 # doctest: +SKIP
>>> for out in engine.stream(ids, SamplingConfig(max_tokens=16)):      # doctest: +SKIP
...     print(out.text, end="")
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ferrolm import _core, hub
from ferrolm._device import core_device
from ferrolm._validate import integers, non_negative, of_type, positive
from ferrolm.sampling import SamplingConfig
from ferrolm.tokenizer import Tokenizer

#: One message from the engine about one request (built by the core).
#: ``kind`` is ``"token"`` (one generated token and the text it completes,
#: possibly empty while a stop string or a multi-byte character is pending),
#: ``"finished"`` (the end: ``finish_reason`` is ``"stop"``, ``"length"`` or
#: ``"abort"``, ``text`` holds any held-back text, ``usage`` is
#: ``(prompt_tokens, cached_tokens, completion_tokens)``) or ``"failed"``
#: (``error`` is the exception to raise); ``index`` is the sample of an
#: ``n > 1`` group. Attributes: ``request_id``, ``index``, ``kind``, ``token``,
#: ``text``, ``logprob``, ``top_logprobs``, ``finish_reason``, ``usage``,
#: ``prompt_logprobs``, ``error``.
Output = _core.EngineOutput

#: Raised by ``submit`` when ``max_waiting`` requests already wait to be admitted (a RuntimeError): retry later.
EngineOverloadedError = _core.EngineOverloadedError
#: The engine thread failed and stopped (a RuntimeError): every request it
#: held fails with it, and so does every later ``submit``.
EngineFailedError = _core.EngineFailedError


@dataclass
class RequestOutput:
    """The whole result of one request."""

    request_id: int
    prompt_token_ids: list[int]
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    prompt_logprobs: list[float] | None = None
    prompt: str | None = None

    def add(self, out: Output) -> None:
        """Folds one output in (raises the request's error if it failed)."""
        if out.kind == "failed":
            raise out.error if out.error is not None else RuntimeError("request failed")
        self.text += out.text
        if out.kind == "token":
            self.token_ids.append(out.token)
            self.logprobs.append(out.logprob)
            self.top_logprobs.append(out.top_logprobs)
        else:
            self.finish_reason = out.finish_reason
            self.prompt_tokens, self.cached_tokens, self.completion_tokens = out.usage
            self.prompt_logprobs = out.prompt_logprobs

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


_DEFAULT_KV_BYTES = 2 << 30


class AsyncEngine:
    """A model served by the continuous-batching engine.

    Args:
        model: a model directory, a ``.gguf`` file or a short name (``"smollm2"``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a GPU index.
        dtype: on a GPU ``"bfloat16"`` (default) or ``"float32"`` (exact); on the
            CPU unset (weights as stored) or ``"float32"`` (exact).
        quantize: ``"q8_0"`` or ``"q4_k"``: quantize an HF checkpoint at load (CPU);
            ``"fp8"``: the linear layers as FP8 E4M3 (CPU and GPU).
        kv_dtype: KV cache precision: on the CPU ``"f16"`` or ``"f32"`` (default: f16
            for quantized models, f32 otherwise); on a GPU ``"bf16"``, ``"f16"`` or
            ``"f32"`` (default: the weights' dtype).
        max_seq_len: longest sequence, prompt plus output (default: the model's context).
        page_size: tokens per KV page.
        num_pages: KV pool size in pages (default: from ``kv_cache_bytes``).
        kv_cache_bytes: KV pool size in bytes when ``num_pages`` is not given,
            counted in the pool's precision (2 bytes a value for f16/bf16, 4 for f32).
        max_num_seqs: most requests running at once.
        max_batch_tokens: most tokens per forward pass (long prompts are chunked).
        prefix_caching: share KV pages of common prompt prefixes between requests.
        max_waiting: most requests queued and not yet admitted (None: no limit);
            past it ``submit`` raises ``EngineOverloadedError`` at once. A
            group of ``n`` counts ``n``; one larger than the limit is taken
            when nothing waits.
    """

    def __init__(self, model: str | os.PathLike[str] = hub.DEFAULT_MODEL, *, device: str | int = "cpu",
                 max_seq_len: int | None = None, page_size: int = 16, num_pages: int | None = None,
                 kv_cache_bytes: int = _DEFAULT_KV_BYTES, max_num_seqs: int = 64,
                 max_batch_tokens: int = 512, prefix_caching: bool = True, dtype: str | None = None,
                 quantize: str | None = None, kv_dtype: str | None = None, max_waiting: int | None = None) -> None:
        path = hub.resolve(model)
        for name, value in (("page_size", page_size), ("kv_cache_bytes", kv_cache_bytes),
                            ("max_num_seqs", max_num_seqs), ("max_batch_tokens", max_batch_tokens),
                            ("num_pages", num_pages), ("max_seq_len", max_seq_len), ("max_waiting", max_waiting)):
            if value is not None:
                positive(value, name)
        self.model_path = str(path)
        self._core = _core.Engine.load(self.model_path, core_device(device), max_seq_len, page_size, num_pages,
                                       kv_cache_bytes, max_num_seqs, max_batch_tokens, bool(prefix_caching), dtype,
                                       quantize, kv_dtype, max_waiting)
        # None for a model directory without tokenizer files (token ids only).
        self.tokenizer: Tokenizer | None = _tokenizer_or_none(path)
        self.model_info: dict[str, Any] = self._core.model_info()
        self.max_seq_len: int = self._core.max_seq_len
        self._listeners: dict[int, Callable[[Output], None]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._pump = threading.Thread(target=self._run_pump, name="ferrolm-outputs", daemon=True)
        self._pump.start()

    # -- submitting ----------------------------------------------------------------

    def submit(self, prompt: Sequence[int], sampling: SamplingConfig, listener: Callable[[Output], None], *,
               prompt_logprobs: bool = False, stream: int = 0) -> int:
        """Queues a tokenized prompt; ``listener`` receives its outputs (on the
        pump thread). Returns the request id. Bad input raises ``ValueError``."""
        return self.submit_group(prompt, sampling, 1, listener, prompt_logprobs=prompt_logprobs, stream=stream)[0]

    def submit_group(self, prompt: Sequence[int], sampling: SamplingConfig, n: int,
                     listener: Callable[[Output], None], *, prompt_logprobs: bool = False,
                     stream: int = 0) -> list[int]:
        """Queues ``n`` samples of one prompt (computed once, its KV pages
        shared); sample ``i`` draws from random stream ``stream + i`` and its
        outputs carry ``index == i``. Returns the request ids in sample order."""
        if self._closed:
            raise RuntimeError("the engine is closed; create a new one")
        of_type(sampling, "sampling", SamplingConfig, "a SamplingConfig")
        n = positive(n, "n")
        ids = integers(prompt, "prompt")
        # Registered under the lock the pump dispatches under, so no output
        # can arrive before its listener.
        with self._lock:
            request_ids = self._core.add_request(ids, sampling, n, stream, prompt_logprobs)
            for request_id in request_ids:
                self._listeners[request_id] = listener
        return request_ids

    def abort(self, request_id: int) -> None:
        """Cancels a request; its pages are freed at the engine's next step."""
        self._core.abort(request_id)

    def stream(self, prompt: Sequence[int], sampling: SamplingConfig, *, n: int = 1,
               prompt_logprobs: bool = False) -> Iterator[Output]:
        """Yields the outputs of the ``n`` samples as they come (blocking),
        until every sample has ended; leaving the loop early cancels them."""
        inbox: queue.Queue[Output] = queue.Queue()
        ids = self.submit_group(prompt, sampling, n, inbox.put, prompt_logprobs=prompt_logprobs)
        running = set(ids)
        try:
            while running:
                out = inbox.get()
                if out.kind != "token":
                    running.discard(out.request_id)
                yield out
        finally:
            for request_id in running:
                self.abort(request_id)

    async def astream(self, prompt: Sequence[int], sampling: SamplingConfig, *, n: int = 1,
                      prompt_logprobs: bool = False) -> AsyncIterator[Output]:
        """``stream`` for asyncio: awaiting never blocks the event loop, and a
        cancelled consumer (e.g. a client that disconnected) cancels the request."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Output] = asyncio.Queue()
        ids = self.submit_group(prompt, sampling, n, lambda out: loop.call_soon_threadsafe(inbox.put_nowait, out),
                                prompt_logprobs=prompt_logprobs)
        running = set(ids)
        try:
            while running:
                out = await inbox.get()
                if out.kind != "token":
                    running.discard(out.request_id)
                yield out
        finally:
            for request_id in running:
                self.abort(request_id)

    async def agenerate(self, prompt: Sequence[int], sampling: SamplingConfig, *,
                        prompt_logprobs: bool = False) -> RequestOutput:
        """Runs one request to its end (asyncio)."""
        result = RequestOutput(request_id=-1, prompt_token_ids=list(prompt))
        async for out in self.astream(prompt, sampling, prompt_logprobs=prompt_logprobs):
            result.request_id = out.request_id
            result.add(out)
        return result

    # -- holding the engine ------------------------------------------------------------

    def pause(self) -> None:
        """Holds the engine between two steps; returns once it is held.

        A held engine still takes requests and aborts (an abort ends its
        request at once, with ``finish_reason == "abort"``) but runs no
        forward pass until ``step`` or ``resume``, so what every request has
        produced is fixed, whatever the machine's speed (tests reach exact
        states with it).
        """
        self._core.pause()

    def step(self, steps: int = 1) -> None:
        """On a held engine: runs exactly ``steps`` steps (one scheduled batch
        each), then holds it again; returns once it is held. A no-op on a
        running engine."""
        self._core.step(non_negative(steps, "steps"))

    def resume(self) -> None:
        """Lets a held engine run on (a no-op on a running one)."""
        self._core.resume()

    # -- state -----------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters: running, waiting, queued (never admitted yet: what
        ``max_waiting`` bounds), pages (``total_pages``, ``used_pages``,
        ``cached_pages``, ``free_pages``, ``available_pages``, as
        ``PagedKVCache.stats`` defines them), prefix hits, prompt/cached/generation
        tokens, preemptions."""
        return self._core.stats()

    @property
    def is_running(self) -> bool:
        return not self._closed and self._core.is_running

    @property
    def failure(self) -> str | None:
        """Why the engine thread failed, once it has (None while it runs and after ``close``)."""
        return self._core.failure

    def close(self) -> None:
        """Cancels every request and stops the engine (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._core.shutdown()
        self._pump.join(timeout=5)

    def __enter__(self) -> AsyncEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_core", None) is not None and not getattr(self, "_closed", True):
            self._closed = True
            self._core.shutdown()

    # -- the pump --------------------------------------------------------------------

    def _run_pump(self) -> None:
        while not self._closed or self._listeners:
            batch = self._core.poll(0.05)
            if not batch and self._closed:
                break
            with self._lock:
                for out in batch:
                    listener = self._listeners.get(out.request_id)
                    if out.kind != "token":
                        self._listeners.pop(out.request_id, None)
                    if listener is None:
                        continue
                    try:
                        listener(out)
                    except Exception:
                        # The listener is gone (e.g. its event loop closed):
                        # stop the request rather than the pump.
                        self._listeners.pop(out.request_id, None)
                        self._core.abort(out.request_id)


def _tokenizer_or_none(path: os.PathLike[str]) -> Tokenizer | None:
    try:
        return Tokenizer.from_pretrained(path)
    except FileNotFoundError:
        return None
