"""What every route needs: the engine, the served name, metrics and the request record.

One ``ServerState`` per app (kept on ``app.state.ferrolm``), so two apps in
one process never share anything but what they were given.

It also knows the generation requests in flight, for the drain at shutdown
(``drain``): from then on new ones are refused, the running ones get a
while to finish, and the rest are ended with an error.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from fastapi import Request

from ferrolm.engine import AsyncEngine
from ferrolm.sampling import SamplingConfig
from ferrolm.server.errors import APIError
from ferrolm.server.metrics import Metrics
from ferrolm.server.runner import RequestGroup
from ferrolm.server.tracker import Tracker

MAX_CHOICES = 128  # OpenAI's limit on n; bounds what one HTTP request can queue


class ServerState:
    def __init__(self, engine: AsyncEngine, model_name: str, api_key: str | None = None,
                 sampling_defaults: Mapping[str, Any] | None = None) -> None:
        self.engine = engine
        # Sampling fields set by the server's inference config: they replace
        # the endpoints' own defaults for requests that leave them out.
        self.sampling_defaults: Mapping[str, Any] = dict(sampling_defaults or {})
        self.tokenizer = engine.tokenizer
        self.model_name = model_name
        self.api_key = api_key
        self.metrics = Metrics(engine, model_name)
        self.tracker = Tracker()
        # Logprob responses name tokens by their text; the vocabulary is fixed,
        # so each id is decoded once.
        self.token_text = lru_cache(maxsize=65536)(self._decode_one)
        # The generation requests in flight, and (while draining) what new ones are refused with.
        self.groups: set[RequestGroup] = set()
        self.refusal: APIError | None = None
        self._idle: asyncio.Event | None = None  # made by drain, on the server's loop

    def _decode_one(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def encode(self, text: str, param: str, add_special_tokens: bool = True) -> list[int]:
        """``text`` as token ids; text the tokenizer cannot take (a lone UTF-16
        surrogate, which is not valid UTF-8) is the client's error."""
        try:
            return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
        except ValueError as e:  # UnicodeEncodeError included
            raise APIError(f"{param} is not valid text: {e}", param=param) from None

    def check_token_ids(self, ids: Sequence[int], param: str) -> list[int]:
        """``ids`` when each is a token of the vocabulary, else a 400."""
        vocab = self.engine.model_info["vocab_size"]
        for i, t in enumerate(ids):
            if not 0 <= t < vocab:
                raise APIError(f"{param}[{i}] = {t} is not a token id (the vocabulary has {vocab})", param=param)
        return list(ids)

    def check_model(self, model: str | None) -> None:
        # A missing model is allowed (curl users); a different one is a 404 like OpenAI's.
        if model is not None and model != self.model_name:
            raise APIError(f"The model `{model}` does not exist; this server serves `{self.model_name}`.",
                           status=404, param="model", code="model_not_found")

    def start(self, prefix: str, prompts: Sequence[list[int]], config: SamplingConfig, n: int,
              started: float, fields: Mapping[str, str] | None = None) -> tuple[str, RequestGroup]:
        """Submits every choice; returns the response id and the running group.
        ``fields`` names the request field behind a config field the engine
        refuses (``{"constraint": "response_format"}``), for the error's ``param``."""
        if n * len(prompts) > MAX_CHOICES:
            raise APIError(f"at most {MAX_CHOICES} choices per request (prompts x n), got {n * len(prompts)}",
                           param="n")
        if self.refusal is not None:
            raise self.refusal.copy()
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        record = self.tracker.start(request_id, config.max_tokens * n * len(prompts))
        try:
            group = RequestGroup(self.engine, prompts, config, n, self.metrics, record, started, self._ended, fields)
        except BaseException:
            record.finished, record.finish_reason = True, "rejected"
            raise
        self.groups.add(group)
        return request_id, group

    def _ended(self, group: RequestGroup) -> None:
        self.groups.discard(group)
        if not self.groups and self._idle is not None:
            self._idle.set()

    @property
    def draining(self) -> bool:
        return self.refusal is not None

    async def drain(self, timeout: float, refusal: APIError, abort: APIError) -> None:
        """Refuses new generation requests with ``refusal``, waits up to
        ``timeout`` seconds for those in flight to finish, then ends the
        rest with ``abort`` (a stream gets it as its last event before
        ``[DONE]``). Returns once none is left."""
        self.refusal = refusal
        if self.groups:
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        self.end_all(abort)

    def end_all(self, error: APIError) -> None:
        """Ends every generation request in flight with ``error`` now."""
        for group in list(self.groups):
            group.cancel(error.copy())
            self._ended(group)  # whatever state it was in, it no longer holds up the drain


def get_state(request: Request) -> ServerState:
    return request.app.state.ferrolm


def now() -> float:
    """The clock latencies are measured with."""
    return time.perf_counter()

