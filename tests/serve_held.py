"""A ``ferrolm serve`` whose engine a test holds and releases, for the drain tests.

Run as ``python serve_held.py MODEL PORT SHUTDOWN_TIMEOUT``: it serves as
``ferrolm serve`` does (the same ``run_server``: signals, drain, exit
status) and reads commands on stdin, one a line, each answered on stdout
once done: ``hold`` holds the engine between steps (``AsyncEngine.pause``:
no request makes progress, however fast the machine), ``release`` lets it
run, ``stats`` prints the engine's counters as JSON. With the engine held,
a test knows exactly which requests are still in flight when it signals.
"""

from __future__ import annotations

import json
import sys
import threading

from ferrolm import AsyncEngine
from ferrolm.server import create_app
from ferrolm.server.lifecycle import run_server


def control(engine: AsyncEngine) -> None:
    for line in sys.stdin:
        command = line.strip()
        if command == "hold":
            engine.pause()
            print("held", flush=True)
        elif command == "release":
            engine.resume()
            print("released", flush=True)
        elif command == "stats":
            print(json.dumps(engine.stats()), flush=True)


def main() -> None:
    model, port, shutdown_timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    engine = AsyncEngine(model, max_seq_len=512)
    try:
        threading.Thread(target=control, args=(engine,), name="control", daemon=True).start()
        run_server(create_app(engine, "tiny-chat"), port=port, log_level="warning",
                   shutdown_timeout=shutdown_timeout)
    finally:
        engine.close()


if __name__ == "__main__":
    main()
