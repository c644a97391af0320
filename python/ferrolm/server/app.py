"""``create_app``: the FastAPI application over one ``AsyncEngine``.

The app does not own the engine: whoever made it closes it (``serve``
does, after uvicorn stops), so tests and embedders can share one engine
between apps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response

from ferrolm._validate import positive
from ferrolm.engine import AsyncEngine
from ferrolm.server import chat, completions, errors, mili_api
from ferrolm.server.auth import require_key
from ferrolm.server.limits import DEFAULT_MAX_REQUEST_BYTES, BodyLimit
from ferrolm.server.metrics import CONTENT_TYPE
from ferrolm.server.protocol import ModelCard, ModelList
from ferrolm.server.state import ServerState, get_state


def create_app(engine: AsyncEngine, model_name: str, api_key: str | None = None,
               sampling_defaults: Mapping[str, Any] | None = None,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> FastAPI:
    """An OpenAI-compatible app serving ``engine`` as ``model_name``.

    Args:
        engine: the running engine (not closed by the app).
        model_name: the id clients name in ``model`` and ``/v1/models`` lists.
        api_key: if set, the generation endpoints need ``Authorization: Bearer <api_key>``.
        sampling_defaults: sampling fields (``SamplingConfig`` names) that
            replace the endpoints' defaults for requests leaving them out.
        max_request_bytes: larger request bodies get a 413 before they are read.
    """
    from ferrolm import __version__

    app = FastAPI(title="ferrolm", version=__version__,
                  description="OpenAI-compatible completions and chat over the ferrolm engine.")
    app.state.ferrolm = ServerState(engine, model_name, api_key or None, sampling_defaults)
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=positive(max_request_bytes, "max_request_bytes"))
    keyed = [Depends(require_key)]
    app.include_router(completions.router, dependencies=keyed)
    app.include_router(chat.router, dependencies=keyed)
    app.include_router(mili_api.router)

    @app.get("/v1/models", dependencies=keyed)
    async def list_models(request: Request) -> ModelList:
        state = get_state(request)
        return ModelList(data=[ModelCard(id=state.model_name, max_model_len=state.engine.max_seq_len)])

    @app.get("/v1/models/{model_id:path}", dependencies=keyed)
    async def get_model(model_id: str, request: Request) -> ModelCard:
        state = get_state(request)
        state.check_model(model_id)
        return ModelCard(id=state.model_name, max_model_len=state.engine.max_seq_len)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        state = get_state(request)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    return app
