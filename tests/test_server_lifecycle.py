"""The server's end of life: the drain on SIGTERM/SIGINT, and an engine that fails.

Real server processes, signalled as a supervisor would. Where a test must
know that a request is still running when the signal lands, the server is
``serve_held.py`` (``ferrolm serve``'s own ``run_server``, with the engine
held by the test): nothing progresses until the test says so, however fast
the machine. Timeouts here are hang guards only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from server_helpers import running_server, sse_events, wait_for

from ferrolm import AsyncEngine, SamplingConfig
from ferrolm.engine import EngineFailedError
from ferrolm.server import create_app

HELD = Path(__file__).parent / "serve_held.py"
GUARD = 60  # seconds: a hang guard, never a measure


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(url: str) -> tuple[int, str | None]:
    try:
        r = httpx.get(f"{url}/health", timeout=5)
    except httpx.TransportError:
        return 0, None
    return r.status_code, r.json().get("status")


class Call(threading.Thread):
    """One HTTP request on its own thread; a stream's ``data:`` payloads are kept in order."""

    def __init__(self, url: str, path: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.path, self.body = url, path, body
        self.status: int | None = None
        self.events: list[str] = []
        self.json: dict | None = None
        self.first_event = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url + self.path, json=self.body, timeout=GUARD * 2) as r:
                self.status = r.status_code
                if not self.body.get("stream") or r.status_code != 200:
                    self.json = json.loads(r.read())
                    return
                for data in sse_events(r.iter_lines()):
                    self.events.append(data)
                    self.first_event.set()
        finally:
            self.first_event.set()

    def result(self) -> Call:
        self.join(GUARD)
        assert not self.is_alive(), f"{self.path} never ended"
        return self

    def errors(self) -> list[dict]:
        return [e["error"] for e in map(json.loads, self.events[:-1]) if "error" in e]


def completion(stream: bool, max_tokens: int) -> dict:
    return {"prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0, "stream": stream}


class Process:
    """A server subprocess on a free port; its output goes to ``log``."""

    def __init__(self, args: list[str], tmp_path: Path, env: dict | None = None, stdin: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "serve.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, *[a.replace("PORT", str(self.port)) for a in args]],
                                         stdin=subprocess.PIPE if stdin else None,
                                         stdout=subprocess.PIPE if stdin else log, stderr=log, text=True,
                                         env={**os.environ, **(env or {})})

        def up() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            return health(self.url)[0] == 200

        wait_for(up, GUARD, "the server to answer", interval=0.05)

    def command(self, line: str) -> str:
        """For serve_held.py: one command, its answer."""
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def stats(self) -> dict:
        return json.loads(self.command("stats"))

    def exit_code(self) -> int:
        try:
            return self.proc.wait(timeout=GUARD)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the server did not exit:\n{self.log.read_text()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def held_server(model: Path, tmp_path: Path, shutdown_timeout: float) -> Process:
    return Process([str(HELD), str(model), "PORT", str(shutdown_timeout)], tmp_path, stdin=True)


def assert_ended_normally(stream: Call) -> None:
    assert stream.status == 200 and stream.events[-1] == "[DONE]", stream.events
    assert stream.errors() == []
    finishes = [c["finish_reason"] for e in stream.events[:-1] for c in json.loads(e)["choices"]]
    assert finishes[-1] in ("stop", "length"), stream.events


# -- the drain ---------------------------------------------------------------------------


def test_sigterm_refuses_new_requests_and_lets_those_in_flight_finish(chat_model, tmp_path):
    server = held_server(chat_model, tmp_path, shutdown_timeout=GUARD * 2)
    try:
        assert server.command("hold") == "held"
        stream = Call(server.url, "/v1/completions", completion(stream=True, max_tokens=16))
        plain = Call(server.url, "/v1/chat/completions",
                     {"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 8, "temperature": 0})
        wait_for(lambda: server.stats()["waiting"] == 2, GUARD, "both requests to reach the engine")
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: health(server.url) == (503, "draining"), GUARD, "/health to say draining")

        # Still listening, but refusing: an answer, not a reset connection.
        refused = httpx.post(f"{server.url}/v1/completions", json=completion(False, 4), timeout=GUARD)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "server_shutting_down"
        assert "shutting down" in refused.json()["error"]["message"]
        assert server.proc.poll() is None and stream.is_alive() and plain.is_alive()

        assert server.command("release") == "released"
        assert_ended_normally(stream.result())
        plain.result()
        assert plain.status == 200 and plain.json["choices"][0]["finish_reason"] in ("stop", "length")
        assert server.exit_code() == 0, server.log.read_text()
    finally:
        server.kill()


def test_past_the_shutdown_timeout_streams_end_with_an_error_then_done(chat_model, tmp_path):
    server = held_server(chat_model, tmp_path, shutdown_timeout=0.5)
    try:
        assert server.command("hold") == "held"
        stream = Call(server.url, "/v1/chat/completions",
                      {"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 400, "stream": True})
        plain = Call(server.url, "/generate", {"prompt": "Hello", "max_tokens": 400})
        wait_for(lambda: server.stats()["waiting"] == 2, GUARD, "both requests to reach the engine")
        # The engine stays held: neither request can finish before the timeout.
        server.proc.send_signal(signal.SIGTERM)

        stream.result()
        assert stream.status == 200 and stream.events[-1] == "[DONE]", stream.events
        (error,) = stream.errors()
        assert error["code"] == "server_shutting_down" and "shutting down" in error["message"]
        plain.result()
        assert plain.status == 503 and plain.json["error"]["code"] == "server_shutting_down", plain.json
        assert server.exit_code() == 0, server.log.read_text()
    finally:
        server.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ferrolm_serve_drains_on_a_signal_and_exits_0(chat_model, tmp_path, sig):
    server = Process(["-m", "ferrolm.cli", "serve", str(chat_model), "--port", "PORT", "--max-seq-len", "256",
                      "--shutdown-timeout", str(GUARD * 2)], tmp_path)
    try:
        stream = Call(server.url, "/v1/completions", completion(stream=True, max_tokens=64))
        assert stream.first_event.wait(GUARD)
        # Whether the stream is still running when the signal lands or not, it ends in full.
        server.proc.send_signal(sig)
        assert_ended_normally(stream.result())
        assert server.exit_code() == 0, server.log.read_text()
        assert "draining" in server.log.read_text()
    finally:
        server.kill()


def test_shutdown_timeout_is_checked():
    out = subprocess.run([sys.executable, "-m", "ferrolm.cli", "serve", "smollm2", "--shutdown-timeout", "-1"],
                         capture_output=True, text=True, timeout=GUARD)
    assert out.returncode == 1 and "shutdown_timeout must be >= 0" in out.stderr


# -- an engine that fails ---------------------------------------------------------------------


def test_a_failed_engine_fails_every_request_and_refuses_new_ones(chat_model, monkeypatch):
    # The test-only hook (see crates/ferrolm-core/src/engine/core.rs): the
    # engine thread panics at its second step with work.
    monkeypatch.setenv("FERROLM_TEST_PANIC_AFTER_STEPS", "1")
    with AsyncEngine(chat_model, max_seq_len=256, max_num_seqs=1) as engine, \
            running_server(create_app(engine, "tiny-chat")) as url:
        monkeypatch.delenv("FERROLM_TEST_PANIC_AFTER_STEPS")
        engine.pause()
        stream = Call(url, "/v1/completions", completion(stream=True, max_tokens=32))
        wait_for(lambda: engine.stats()["waiting"] == 1, GUARD, "the stream to reach the engine")
        engine.step(1)  # the stream runs (one slot) ...
        plain = Call(url, "/v1/completions", completion(stream=False, max_tokens=32))
        wait_for(lambda: engine.stats()["waiting"] == 1, GUARD, "the second request to reach the engine")
        with pytest.raises(EngineFailedError, match="the engine failed"):
            engine.step(1)  # ... and the engine thread panics: one request running, one waiting

        stream.result()
        assert stream.status == 200 and stream.events[-1] == "[DONE]"
        (error,) = stream.errors()
        assert error["type"] == "server_error" and "the engine failed" in error["message"], error
        plain.result()
        assert plain.status == 500 and "the engine failed" in plain.json["error"]["message"], plain.json

        # Later requests fail at once, without reaching a dead engine.
        refused = httpx.post(f"{url}/v1/chat/completions", timeout=GUARD,
                             json={"messages": [{"role": "user", "content": "Hi!"}], "max_tokens": 4})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_failed", refused.text
        with pytest.raises(EngineFailedError):
            engine.submit([1, 2, 3], SamplingConfig(max_tokens=2), lambda out: None)
        r = httpx.get(f"{url}/health", timeout=GUARD)
        assert r.status_code == 503 and r.json()["status"] == "unhealthy"
        assert "panic injected for tests" in r.json()["error"]
        assert "panic injected for tests" in engine.failure
        assert engine.stats()["queued"] == 0


def test_ferrolm_serve_exits_non_zero_when_the_engine_fails(chat_model, tmp_path):
    server = Process(["-m", "ferrolm.cli", "serve", str(chat_model), "--port", "PORT", "--max-seq-len", "256"],
                     tmp_path, env={"FERROLM_TEST_PANIC_AFTER_STEPS": "2"})
    try:
        stream = Call(server.url, "/v1/completions", completion(stream=True, max_tokens=64))
        stream.result()
        assert stream.status == 200 and stream.events[-1] == "[DONE]", stream.events
        (error,) = stream.errors()
        assert "the engine failed" in error["message"], error
        # A supervisor restarts a server that exits non-zero.
        assert server.exit_code() == 1, server.log.read_text()
        assert "ferrolm: error: the engine failed" in server.log.read_text()
    finally:
        server.kill()
