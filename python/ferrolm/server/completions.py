"""``POST /v1/completions``: text in, text out, as OpenAI's legacy completions API."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ferrolm.engine import RequestOutput
from ferrolm.server.errors import APIError
from ferrolm.server.params import COMPLETION_MAX_TOKENS, check_common, check_logprobs, request_fields, sampling_config
from ferrolm.server.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    PromptTokensDetails,
    Usage,
)
from ferrolm.server.runner import RequestGroup, wait_or_abort
from ferrolm.server.sse import DONE, EventStream, event
from ferrolm.server.state import ServerState, get_state, now
from ferrolm.server.structured import constraint_of

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def create_completion(req: CompletionRequest, request: Request):
    state = get_state(request)
    started = now()
    state.metrics.request("completions")
    state.check_model(req.model)
    check_common(req)
    check_logprobs(req.logprobs, "logprobs")
    if req.echo:
        raise APIError("echo is not supported", param="echo")
    if req.suffix:
        raise APIError("suffix is not supported", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise APIError("best_of is not supported (use n)", param="best_of")
    # Tokenizing a large prompt takes a while: off the event loop, so /health and streams keep answering.
    prompts = await run_in_threadpool(_prompts, state, req.prompt)
    max_tokens = state.sampling_defaults.get("max_tokens", COMPLETION_MAX_TOKENS) if req.max_tokens is None \
        else req.max_tokens
    constraint = constraint_of(req)
    config = sampling_config(req, max_tokens, req.logprobs, state.sampling_defaults, constraint)
    request_id, group = state.start("cmpl", prompts, config, req.n, started, request_fields(constraint))
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        body = _stream(state, group, request_id, req.logprobs is not None, include_usage)
        return EventStream(body, on_close=group.close)
    results = await wait_or_abort(group, request.receive)
    choices = [
        CompletionChoice(index=k, text=r.text, finish_reason=r.finish_reason,
                         logprobs=_logprobs(state, r, group.offsets[k], 0) if req.logprobs is not None else None)
        for k, r in enumerate(results)
    ]
    return CompletionResponse(id=request_id, model=state.model_name, choices=choices, usage=usage_of(group))


def _prompts(state: ServerState, prompt: str | list) -> list[list[int]]:
    """One prompt (text or token ids) or a list of them, as token ids."""
    if isinstance(prompt, str):
        return [state.encode(prompt, "prompt")]
    if not prompt:
        raise APIError("prompt must not be empty", param="prompt")
    if all(isinstance(t, int) for t in prompt):
        return [state.check_token_ids(prompt, "prompt")]
    return [state.encode(p, "prompt") if isinstance(p, str) else state.check_token_ids(p, "prompt") for p in prompt]


def usage_of(group: RequestGroup) -> Usage:
    prompt, cached, completion = group.usage()
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))


def _logprobs(state: ServerState, result: RequestOutput, offsets: list[int], start: int,
              end: int | None = None) -> CompletionLogprobs:
    """Tokens ``start:end`` of a choice in the completions logprobs shape."""
    ids = result.token_ids[start:end]
    return CompletionLogprobs(
        tokens=[state.token_text(t) for t in ids],
        token_logprobs=result.logprobs[start:end],
        top_logprobs=[{state.token_text(t): lp for t, lp in top} for top in result.top_logprobs[start:end]],
        text_offset=offsets[start:end],
    )


async def _stream(state: ServerState, group: RequestGroup, request_id: str, logprobs: bool,
                  include_usage: bool) -> AsyncIterator[str]:
    def chunk(k: int, text: str, finish_reason: str | None = None,
              lp: CompletionLogprobs | None = None) -> str:
        return event(CompletionResponse(id=request_id, model=state.model_name, choices=[
            CompletionChoice(index=k, text=text, logprobs=lp, finish_reason=finish_reason)]))

    try:
        async for k, out in group.events():
            if out.kind == "token":
                # Tokens whose text is held back (a possible stop string, a
                # partial UTF-8 character) send nothing unless logprobs are wanted.
                if out.text or logprobs:
                    r = group.results[k]
                    n = len(r.token_ids)
                    yield chunk(k, out.text, lp=_logprobs(state, r, group.offsets[k], n - 1, n) if logprobs else None)
            else:
                yield chunk(k, out.text, finish_reason=out.finish_reason)
        if include_usage:
            yield event(CompletionResponse(id=request_id, model=state.model_name, choices=[], usage=usage_of(group)))
    except APIError as e:
        yield event(e.body())
    finally:
        group.close()
    yield DONE
