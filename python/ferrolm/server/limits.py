"""A cap on request bodies, checked before they are read: a body declared
(``Content-Length``) or streamed past ``max_bytes`` gets a 413 in OpenAI's
error shape at once, so a huge upload costs neither memory nor event-loop time."""

from __future__ import annotations

import json
from typing import Any, Callable

from ferrolm.server.errors import error_body

#: The default cap: far past any prompt a context holds (a million tokens of text is ~4 MB).
DEFAULT_MAX_REQUEST_BYTES = 32 << 20
#: After a 413, up to this much of the rest of the body is read and dropped, so
#: that a client still sending gets the answer rather than a reset connection
#: (closing a socket with unread data resets it); a larger upload is cut off.
DRAIN_BYTES = 1 << 20


class BodyLimit:
    """ASGI middleware that refuses bodies of more than ``max_bytes``."""

    def __init__(self, app: Callable[..., Any], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return await _drain(receive)
        seen = 0
        started = refused = False

        async def counted_receive():
            # Past the cap the 413 goes out at once and the app is told the
            # client left, so it stops reading; whatever it answers is dropped.
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not started:
                    refused = True
                    await self._refuse(send)
                    if message.get("more_body", False):
                        await _drain(receive)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, send) -> None:
        body = json.dumps(error_body(f"the request body is larger than {self.max_bytes} bytes "
                                     "(ferrolm serve --max-request-bytes)", 413)).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


async def _drain(receive) -> None:
    """Reads and drops what is left of a request body, up to ``DRAIN_BYTES``."""
    left = DRAIN_BYTES
    while left > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        left -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return
