"""One HTTP request's engine requests (``n`` choices per prompt), merged for asyncio.

An OpenAI request with ``n > 1`` or several prompts is several engine
requests (one ``submit_group`` per prompt: prefilled once, its pages shared
by the samples, each on its own random stream), read here as one sequence of
events. All of them are submitted up front, in the handler, so
a bad one (e.g. a prompt longer than the context) is a ``ValueError`` before
any response byte is sent: a 400 even when streaming. ``close`` aborts
whatever has not finished, which frees its KV pages; handlers call it in a
``finally`` and the streaming response calls it when the client goes away.
``cancel`` ends a group from outside (the server shutting down, the engine
failed): its reader gets the error at once, whatever the engine does.

A full waiting queue (``--max-waiting``) is a 429 with ``Retry-After``; an
engine that has failed refuses with a 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from ferrolm._validate import config_error_field
from ferrolm.engine import AsyncEngine, EngineFailedError, EngineOverloadedError, Output, RequestOutput
from ferrolm.sampling import SamplingConfig
from ferrolm.server.errors import APIError
from ferrolm.server.metrics import Metrics
from ferrolm.server.tracker import Record

#: Seconds a client refused for a full queue is told to wait (``Retry-After``):
#: a queue drains in about a request's time, which is seconds on any model served.
RETRY_AFTER_SECONDS = 1


class RequestGroup:
    """Choice ``k`` is prompt ``k // n``'s ``k % n``-th sample.

    It runs on random stream ``k % n`` (the engine's ``submit_group``), so
    with a seed choice 0 of every prompt matches the same request sent alone,
    and the other choices differ.
    """

    def __init__(self, engine: AsyncEngine, prompts: Sequence[list[int]], config: SamplingConfig, n: int,
                 metrics: Metrics, record: Record, started: float,
                 on_end: Callable[[RequestGroup], None] | None = None,
                 fields: Mapping[str, str] | None = None) -> None:
        self.n = n
        self.prompts = list(prompts)
        self.results = [RequestOutput(request_id=-1, prompt_token_ids=p) for p in self.prompts for _ in range(n)]
        self.offsets: list[list[int]] = [[] for _ in self.results]  # text offset of each token
        self._engine = engine
        self._metrics = metrics
        self._record = record
        self._started = started
        self._last: list[float | None] = [None] * len(self.results)
        self._open: set[int] = set()
        self._queue: asyncio.Queue[tuple[int, Output | None]] = asyncio.Queue()
        self._error: APIError | None = None  # set by cancel
        self._on_end = on_end
        loop = asyncio.get_running_loop()
        try:
            for p, prompt in enumerate(self.prompts):
                # The engine's pump thread calls the listener; hop onto the loop.
                def listener(out: Output, first: int = p * n) -> None:
                    loop.call_soon_threadsafe(self._queue.put_nowait, (first + out.index, out))

                # One group per prompt: the prompt is prefilled once and its
                # KV pages shared by the n samples (sample i on stream i).
                ids = engine.submit_group(prompt, config, n, listener)
                for i, request_id in enumerate(ids):
                    self.results[p * n + i].request_id = request_id
                    self._open.add(p * n + i)
        except ValueError as e:
            self.close()
            field = config_error_field(str(e))
            param = "prompt" if "max_seq_len" in str(e) else (fields or {}).get(field, field)
            raise APIError(str(e), param=param) from None
        except EngineOverloadedError as e:
            self.close()
            raise APIError(str(e), status=429, code="engine_overloaded",
                           headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
        except EngineFailedError as e:
            self.close()
            raise APIError(str(e), status=503, code="engine_failed") from None
        except BaseException:
            self.close()
            raise

    async def events(self) -> AsyncIterator[tuple[int, Output]]:
        """Yields ``(choice, output)`` as outputs arrive, each already folded
        into ``results[choice]``, until every choice has finished."""
        while self._open or self._error is not None:
            if self._error is not None:
                raise self._error
            k, out = await self._queue.get()
            if out is None:  # cancel's wake-up
                continue
            now = time.perf_counter()
            result = self.results[k]
            if out.kind == "failed":
                self._open.discard(k)
                self._metrics.finished("error")
                self.close()
                raise APIError(f"generation failed: {out.error}", status=500)
            if out.kind == "token":
                last = self._last[k]
                if last is None:
                    self._metrics.ttft.observe(now - self._started)
                else:
                    self._metrics.itl.observe(now - last)
                self._last[k] = now
                self.offsets[k].append(len(result.text))
                self._record.tokens_generated += 1
            else:
                self._open.discard(k)
                self._metrics.finished(out.finish_reason or "stop")
            result.add(out)
            if not self._open:
                self._finish()
            yield k, out

    async def wait(self) -> list[RequestOutput]:
        """Runs every choice to its end."""
        async for _ in self.events():
            pass
        return self.results

    def cancel(self, error: APIError) -> None:
        """Ends the group now: ``events`` (and ``wait``) raise ``error``, and
        the choices still running are aborted. A no-op once it has ended."""
        if self._open:
            self._error = error
            self.close()
            self._queue.put_nowait((-1, None))

    def close(self) -> None:
        """Aborts the choices still running (idempotent)."""
        for k in sorted(self._open):
            self._engine.abort(self.results[k].request_id)
            self._metrics.finished("abort")
            self.results[k].finish_reason = self.results[k].finish_reason or "abort"
        self._open.clear()
        self._finish()

    def _finish(self) -> None:
        if not self._record.finished:
            self._record.finished = True
            reasons = {r.finish_reason for r in self.results}
            self._record.finish_reason = reasons.pop() if len(reasons) == 1 else "mixed"
            if self._on_end is not None:
                self._on_end(self)

    # -- usage -------------------------------------------------------------------

    def usage(self) -> tuple[int, int, int]:
        """(prompt, cached prompt, completion) tokens. Each prompt counts once,
        however many choices it has, as OpenAI counts them."""
        firsts = self.results[:: self.n]
        prompt = sum(len(r.prompt_token_ids) for r in firsts)
        cached = sum(r.cached_tokens for r in firsts)
        completion = sum(r.completion_tokens or len(r.token_ids) for r in self.results)
        return prompt, cached, completion


async def until_disconnected(receive) -> None:
    """Returns when the client of a plain (non-streaming) request goes away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def wait_or_abort(group: RequestGroup, receive) -> list[RequestOutput]:
    """``group.wait()``, but a client that hangs up aborts the work (uvicorn
    does not cancel a handler whose client left)."""
    work = asyncio.ensure_future(group.wait())
    watch = asyncio.ensure_future(until_disconnected(receive))
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            group.close()
            raise APIError("client disconnected", status=499)
        return work.result()
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
        group.close()
