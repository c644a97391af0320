"""``Server``: uvicorn with a graceful drain on SIGTERM/SIGINT and an exit when the engine fails.

uvicorn's own handling does not fit a server of long streams: on a signal it
stops listening at once (a new client gets a refused connection, not an
answer), then waits for every connection to close, which a long stream
keeps open until it ends (or until ``timeout_graceful_shutdown`` cuts it off
without its last events), and finally re-raises the signal, so even a clean
stop exits with status 143. Here a signal starts a drain instead: the server
keeps listening and answers new generation requests with a 503, ``/health``
says ``draining``, the requests in flight get ``shutdown_timeout`` seconds
to finish, the rest are ended with an error (a stream gets an error event
and ``[DONE]``), and only then does uvicorn shut down, with nothing left
to wait for; ``run`` then returns (exit status 0). A second signal ends the
requests in flight at once.

When the engine thread fails, every request in flight ends with a 500, new
ones get a 503, and the server stops; ``run`` raises ``RuntimeError`` so
that ``ferrolm serve`` exits non-zero and a supervisor restarts it.
"""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import uvicorn
from fastapi import FastAPI

from ferrolm.server.errors import APIError
from ferrolm.server.state import ServerState

#: Default seconds the requests in flight get to finish after a SIGTERM/SIGINT.
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
#: After the drain, what uvicorn may still spend sending the last events to
#: slow readers before it cuts their connections: only a guard, the drain
#: has already ended every request.
_FLUSH_SECONDS = 10

logger = logging.getLogger("uvicorn.error")  # uvicorn's own log: shown at --log-level, formatted as its lines


class Server(uvicorn.Server):
    """A ``uvicorn.Server`` for a ferrolm app (``create_app``'s) that drains on signals."""

    def __init__(self, config: uvicorn.Config, state: ServerState,
                 shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
        super().__init__(config)
        self.state = state
        self.shutdown_timeout = shutdown_timeout
        #: Why the engine failed, if that is what stopped the server.
        self.failure: str | None = None
        self._signals = 0
        self._drain: asyncio.Task[None] | None = None
        self._forced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in a signal handler: only a count here; the loop acts on it
        # at its next tick (uvicorn's ticks are 0.1 s apart). Not recorded
        # in uvicorn's captured signals, so it is not re-raised at the end.
        self._signals += 1

    async def on_tick(self, counter: int) -> bool:
        if self._drain is None:
            if not self.state.engine.is_running:
                self.failure = self.state.engine.failure or "the engine thread stopped"
                logger.error("ferrolm: the engine failed (%s); ending every request and exiting", self.failure)
                message = f"the engine failed: {self.failure}; the server is exiting"
                self._start_drain(0.0, APIError(message, 503, code="engine_failed"),
                                  APIError(message, 500, code="engine_failed"))
            elif self._signals:
                logger.info("ferrolm: draining: refusing new requests, giving those in flight %gs",
                            self.shutdown_timeout)
                error = APIError("the server is shutting down; retry on another instance", 503,
                                 code="server_shutting_down")
                self._start_drain(self.shutdown_timeout, error, error)
        elif self._signals > 1 and not self._forced:
            # A second signal: no more waiting.
            self._forced = True
            self.state.end_all(APIError("the server is shutting down", 503, code="server_shutting_down"))
        return await super().on_tick(counter)

    def _start_drain(self, timeout: float, refusal: APIError, abort: APIError) -> None:
        async def drain() -> None:
            try:
                await self.state.drain(timeout, refusal, abort)
            finally:
                self.should_exit = True

        self._drain = asyncio.ensure_future(drain())


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
               shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT) -> None:
    """Serves ``app`` (made by ``create_app``) until a signal has drained it.

    Raises ``RuntimeError`` if the engine failed (the server stopped for it)
    and ``SystemExit`` if the server could not start (as ``uvicorn.run``)."""
    if not shutdown_timeout >= 0:
        raise ValueError(f"shutdown_timeout must be >= 0 seconds, got {shutdown_timeout}")
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=_FLUSH_SECONDS)
    server = Server(config, app.state.ferrolm, shutdown_timeout)
    server.run()
    if not server.started:
        raise SystemExit(3)  # uvicorn's STARTUP_FAILURE: it has logged why
    if server.failure is not None:
        raise RuntimeError(f"the engine failed: {server.failure}")
