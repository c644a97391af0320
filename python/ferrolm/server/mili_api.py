"""The endpoints of MILI's server, ``POST /generate``, ``GET /health`` and ``GET /``,
and ``GET /status/{id}``, which reports a request in the shape of MILI's
``ContinuousBatchScheduler.get_request_status``.

``/generate`` continues the raw prompt (no chat template) with MILI's
sampling defaults (temperature 1.0, top_p 0.95, top_k 50) and plain
sampling otherwise: no min_p, no repetition penalty.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ferrolm.sampling import SamplingConfig
from ferrolm.server.auth import require_key
from ferrolm.server.errors import APIError
from ferrolm.server.protocol import GenerateRequest, GenerateResponse
from ferrolm.server.runner import RequestGroup, wait_or_abort
from ferrolm.server.sse import DONE, EventStream, event
from ferrolm.server.state import get_state, now

router = APIRouter()
# MILI's /generate defaults.
GENERATE_DEFAULTS = {"max_tokens": 50, "temperature": 1.0, "top_p": 0.95, "top_k": 50}


@router.post("/generate", response_model=None, dependencies=[Depends(require_key)])
async def generate(req: GenerateRequest, request: Request):
    state = get_state(request)
    started = now()
    state.metrics.request("generate")
    given = {k: v for k, v in req.model_dump(include=set(GENERATE_DEFAULTS)).items() if v is not None}
    knobs = {**GENERATE_DEFAULTS, **{k: v for k, v in state.sampling_defaults.items() if k in GENERATE_DEFAULTS},
             **given}
    if knobs["max_tokens"] < 0:
        raise APIError(f"max_tokens must be >= 0, got {knobs['max_tokens']}", param="max_tokens")
    try:
        config = SamplingConfig(min_p=0.0, repetition_penalty=1.0, **knobs)
    except ValueError as e:
        raise APIError(str(e)) from None
    prompt = await run_in_threadpool(state.encode, req.prompt, "prompt")
    request_id, group = state.start("gen", [prompt], config, 1, started)
    if req.stream:
        return EventStream(_stream(group, request_id), on_close=group.close)
    (result,) = await wait_or_abort(group, request.receive)
    return GenerateResponse(request_id=request_id, generated_text=result.text, tokens=result.token_ids,
                            total_tokens=len(prompt) + len(result.token_ids), prompt_tokens=len(prompt),
                            finish_reason=result.finish_reason)


async def _stream(group: RequestGroup, request_id: str) -> AsyncIterator[str]:
    """One event per token (``text`` may be empty while a character is
    incomplete), then a final event with the whole result."""
    try:
        async for _, out in group.events():
            if out.kind == "token":
                yield event({"request_id": request_id, "text": out.text, "token": out.token, "finished": False})
            else:
                (r,) = group.results
                yield event({"request_id": request_id, "text": out.text, "finished": True,
                             "finish_reason": out.finish_reason, "generated_text": r.text, "tokens": r.token_ids,
                             "prompt_tokens": len(r.prompt_token_ids),
                             "total_tokens": len(r.prompt_token_ids) + len(r.token_ids)})
    except APIError as e:
        yield event(e.body())
    finally:
        group.close()
    yield DONE


@router.get("/status/{request_id}", dependencies=[Depends(require_key)])
async def status(request_id: str, request: Request):
    state = get_state(request)
    return state.tracker.get(request_id)


@router.get("/health")
async def health(request: Request):
    state = get_state(request)
    # Open without an API key, so load balancers and orchestrators can probe it.
    # A failed engine is unhealthy (the server is about to exit); a server
    # draining at shutdown is "draining": either way a balancer stops sending.
    info = dict(state.engine.model_info)
    running = state.engine.is_running
    status = "unhealthy" if not running else "draining" if state.draining else "healthy"
    body = {
        **info,  # first, so MILI's keys below win over any of the same name
        "status": status,
        "model_loaded": True,
        "scheduler_ready": running,
        "model": state.model_name,
        "model_type": info.get("architecture"),
        "vocab_size": info.get("vocab_size"),
        "max_seq_length": state.engine.max_seq_len,
    }
    if state.engine.failure is not None:
        body["error"] = f"the engine failed: {state.engine.failure}"
    return JSONResponse(body, status_code=200 if status == "healthy" else 503)


@router.get("/")
async def root(request: Request):
    state = get_state(request)
    from ferrolm import __version__

    return {
        "message": "ferrolm OpenAI-compatible server",
        "version": __version__,
        "model": state.model_name,
        "endpoints": {
            "completions": "POST /v1/completions",
            "chat": "POST /v1/chat/completions",
            "models": "GET /v1/models",
            "generate": "POST /generate",
            "status": "GET /status/{request_id}",
            "health": "GET /health",
            "metrics": "GET /metrics",
            "docs": "GET /docs",
        },
    }
