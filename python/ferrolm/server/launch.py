"""``serve``: load the engine, build the app, serve it until a signal has drained it (``ferrolm serve``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ferrolm import hub, inference_config


def default_model_name(model: str | os.PathLike[str]) -> str:
    """What ``/v1/models`` calls a model: the argument's basename without ``.gguf``."""
    name = Path(os.fspath(model)).expanduser().name or str(model)
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


def serve(model: str | os.PathLike[str] = hub.DEFAULT_MODEL, *, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, served_model_name: str | None = None, log_level: str = "info",
          config: inference_config.ConfigSource | None = None, max_request_bytes: int | None = None,
          shutdown_timeout: float | None = None, **engine_args: Any) -> None:
    """Serves ``model`` over HTTP until SIGTERM/SIGINT; ``engine_args`` go to
    ``AsyncEngine``, after the inference ``config``'s (a setting in both
    raises ``ValueError``), whose sampling fields become request defaults.

    On a signal the server drains (see ``ferrolm.server.lifecycle``): new
    requests get a 503, those in flight get ``shutdown_timeout`` seconds
    (default 30) to finish, then the rest end with an error, and ``serve``
    returns. If the engine fails, ``serve`` raises ``RuntimeError``."""
    from ferrolm.engine import AsyncEngine
    from ferrolm.server.app import create_app
    from ferrolm.server.lifecycle import DEFAULT_SHUTDOWN_TIMEOUT, run_server

    if shutdown_timeout is None:
        shutdown_timeout = DEFAULT_SHUTDOWN_TIMEOUT
    if not shutdown_timeout >= 0:  # NaN included
        raise ValueError(f"shutdown_timeout must be >= 0 seconds, got {shutdown_timeout}")

    settings = inference_config.load(config)
    defaults = {}
    if settings is not None:
        engine_args = settings.merged_args(engine_args)
        defaults = {k: getattr(settings.sampling, k) for k in settings.sampling_keys}
    name = served_model_name or default_model_name(model)
    engine = AsyncEngine(model, **engine_args)
    try:
        limit = {} if max_request_bytes is None else {"max_request_bytes": max_request_bytes}
        app = create_app(engine, name, api_key=api_key, sampling_defaults=defaults, **limit)
        shown = f"[{host}]" if ":" in host else host
        print(f"ferrolm: serving {name!r} (max_seq_len {engine.max_seq_len}) at http://{shown}:{port}/v1"
              + (" (API key required)" if api_key else ""), file=sys.stderr, flush=True)
        run_server(app, host=host, port=port, log_level=log_level, shutdown_timeout=shutdown_timeout)
    finally:
        engine.close()
