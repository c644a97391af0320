"""Server-sent events: ``data: {json}\\n\\n`` frames, and a response that
always cleans up after its stream.

Starlette's ``StreamingResponse`` stops iterating when the client leaves but
leaves closing the generator to the garbage collector (and never starts a
generator it had no chance to run), so a request whose client vanished
could keep decoding. ``EventStream`` watches for the disconnect itself and,
whatever happens, closes the generator and calls ``on_close`` (which aborts
the engine requests) before returning.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = "data: [DONE]\n\n"


def event(data: BaseModel | dict[str, Any]) -> str:
    """One SSE frame holding ``data`` as JSON."""
    if isinstance(data, BaseModel):
        body = data.model_dump_json()
    else:
        body = json.dumps(data, ensure_ascii=False)
    return f"data: {body}\n\n"


class EventStream(StreamingResponse):
    def __init__(self, body: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        # no-cache/no buffering: proxies must pass each event on as it comes.
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._body = body
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:
                        pass  # the connection broke while sending: the client is gone
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            try:
                aclose = getattr(self._body, "aclose", None)
                if aclose is not None:
                    with anyio.CancelScope(shield=True):
                        await aclose()
            finally:
                self._on_close()
