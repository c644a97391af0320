"""A real uvicorn server on a loopback port, in a background thread, for the server tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import uvicorn


@contextlib.contextmanager
def running_server(app, timeout: float = 30.0) -> Iterator[str]:
    """Serves ``app`` on 127.0.0.1 (a free port chosen by the OS); yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), timeout, "the server to start")
        assert server.started, "uvicorn failed to start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.01) -> None:
    """Bounded polling: returns once ``condition()`` holds, fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def engine_idle(engine) -> bool:
    """No request left in the engine and every KV page back in the pool."""
    s = engine.stats()
    return s["used_pages"] == 0 and s["running"] == 0 and s["waiting"] == 0


def sse_events(lines) -> Iterator[str]:
    """The ``data:`` payloads of a server-sent event stream, given its lines."""
    for line in lines:
        if line.startswith("data: "):
            yield line[len("data: "):]


class Served:
    """A running server: its engine, the official ``openai`` client and ``httpx``."""

    def __init__(self, url: str, engine) -> None:
        self.url = url
        self.engine = engine
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        self.http = httpx.Client(base_url=url, timeout=60)
