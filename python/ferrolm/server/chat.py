"""``POST /v1/chat/completions``: messages rendered with the model's chat template."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ferrolm.engine import RequestOutput
from ferrolm.server.completions import usage_of
from ferrolm.server.errors import APIError
from ferrolm.server.params import check_common, check_logprobs, request_fields, sampling_config
from ferrolm.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessage,
    DeltaMessage,
    TokenLogprob,
    TopLogprob,
)
from ferrolm.server.runner import RequestGroup, wait_or_abort
from ferrolm.server.sse import DONE, EventStream, event
from ferrolm.server.state import ServerState, get_state, now
from ferrolm.server.structured import constraint_of
from ferrolm.server.tools import Tools, tools_of

router = APIRouter()


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(req: ChatCompletionRequest, request: Request):
    state = get_state(request)
    started = now()
    state.metrics.request("chat")
    state.check_model(req.model)
    check_common(req)
    if req.max_completion_tokens is not None and req.max_completion_tokens < 0:
        raise APIError(f"max_completion_tokens must be >= 0, got {req.max_completion_tokens}",
                       param="max_completion_tokens")
    check_logprobs(req.top_logprobs, "top_logprobs")
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError("top_logprobs needs logprobs: true", param="top_logprobs")
    tools = tools_of(req, state.tokenizer.chat_template)
    # Rendering and tokenizing take a while for a long chat: off the event loop.
    prompt = await run_in_threadpool(_render, state, req.messages, req.chat_template_kwargs or {}, tools)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is None:
        # OpenAI's chat default: until the model stops or the context is full.
        max_tokens = state.sampling_defaults.get("max_tokens", max(state.engine.max_seq_len - len(prompt), 1))
    constraint = _constraint(req, tools)
    config = sampling_config(req, max_tokens, (req.top_logprobs or 0) if req.logprobs else None,
                             state.sampling_defaults, constraint)
    request_id, group = state.start("chatcmpl", [prompt], config, req.n, started, request_fields(constraint))
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        body = _stream(state, group, request_id, req.logprobs, include_usage, tools)
        return EventStream(body, on_close=group.close)
    results = await wait_or_abort(group, request.receive)
    choices = []
    for k, r in enumerate(results):
        content, calls = tools.parse(r.text) if tools is not None and tools.parses else (r.text, [])
        choices.append(ChatChoice(index=k, message=AssistantMessage(content=content, tool_calls=calls or None),
                                  finish_reason=_finish_reason(r.finish_reason, bool(calls)),
                                  logprobs=ChatLogprobs(content=_logprobs(state, r, 0)) if req.logprobs else None))
    return ChatCompletionResponse(id=request_id, model=state.model_name, choices=choices, usage=usage_of(group))


def _constraint(req: ChatCompletionRequest, tools: Tools | None) -> tuple[str, dict[str, Any]] | None:
    """The request field that constrains the output and its constraint: a
    forced tool call's grammar, or structured output, never both."""
    constraint = constraint_of(req)
    if tools is None or not tools.parses:
        return constraint
    if constraint is not None:
        # The constraint would leave no room for a call (or a call none for the format).
        raise APIError(f"`{constraint[0]}` cannot be combined with tools: a constrained answer could not call "
                       'them; send tool_choice "none" to answer in that format without tools', param=constraint[0])
    forced = tools.constraint()
    return None if forced is None else ("tool_choice", forced)


def _finish_reason(reason: str | None, called: bool) -> str | None:
    # OpenAI says "tool_calls" when the model stopped to call tools; a cut answer stays "length".
    return "tool_calls" if called and reason == "stop" else reason


def _render(state: ServerState, messages: list[ChatMessage], template_args: dict[str, Any],
            tools: Tools | None) -> list[int]:
    """The conversation as prompt token ids, through the model's chat template."""
    if state.tokenizer.chat_template is None:
        raise APIError(f"the model `{state.model_name}` has no chat template; use /v1/completions",
                       param="messages")
    if not messages:
        raise APIError("messages must not be empty", param="messages")
    plain = []
    for i, m in enumerate(messages):
        d = m.model_dump(exclude_none=True)
        d["content"] = _text(m.content, i)
        # OpenAI's newer "developer" role is the system prompt to templates that predate it.
        if d["role"] == "developer":
            d["role"] = "system"
        plain.append(d)
    # chat_template_kwargs reach the template as vLLM passes them: they may set
    # add_generation_prompt, but the request's own messages always win.
    if tools is not None:
        plain = tools.prepare(plain)
    args = {k: v for k, v in template_args.items() if k != "messages"}
    if tools is not None:
        args.update(tools.template_kwargs())
    add_generation_prompt = args.pop("add_generation_prompt", True)
    if not isinstance(add_generation_prompt, bool):
        raise APIError("chat_template_kwargs.add_generation_prompt must be true or false",
                       param="chat_template_kwargs")
    try:
        text = state.tokenizer.apply_chat_template(plain, add_generation_prompt, **args)
    except ValueError as e:
        raise APIError(f"chat template failed: {e}", param="messages") from None
    # The template already wrote any BOS token; encoding must not add another.
    return state.encode(text, "messages", add_special_tokens=False)


def _text(content: str | list[dict[str, Any]] | None, i: int) -> str:
    """A message's content as text; content parts must all be text."""
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError(f"messages[{i}]: only text content parts are supported, got {part.get('type')!r}",
                           param="messages")
        parts.append(part["text"])
    return "".join(parts)


def _logprobs(state: ServerState, result: RequestOutput, start: int, end: int | None = None) -> list[TokenLogprob]:
    def entry(token: int, logprob: float) -> dict[str, Any]:
        text = state.token_text(token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return [
        TokenLogprob(**entry(t, lp), top_logprobs=[TopLogprob(**entry(a, alp)) for a, alp in top])
        for t, lp, top in zip(result.token_ids[start:end], result.logprobs[start:end],
                              result.top_logprobs[start:end])
    ]


async def _stream(state: ServerState, group: RequestGroup, request_id: str, logprobs: bool,
                  include_usage: bool, tools: Tools | None) -> AsyncIterator[str]:
    def chunk(k: int, delta: DeltaMessage, finish_reason: str | None = None,
              lp: list[TokenLogprob] | None = None) -> str:
        choice = ChatChunkChoice(index=k, delta=delta, finish_reason=finish_reason,
                                 logprobs=ChatLogprobs(content=lp) if lp is not None else None)
        return event(ChatCompletionChunk(id=request_id, model=state.model_name, choices=[choice]))

    # Per choice, the text split into content and tool calls as it arrives.
    streams = [tools.stream() if tools is not None and tools.parses else None for _ in group.results]
    try:
        # OpenAI opens every choice with the assistant role and empty content.
        for k in range(len(group.results)):
            yield chunk(k, DeltaMessage(role="assistant", content=""))
        async for k, out in group.events():
            text, calls = streams[k].push(out.text) if streams[k] else (out.text, [])
            if out.kind != "token" and streams[k]:
                rest, more = streams[k].finish()
                text, calls = text + rest, calls + more
            for call in calls:
                yield chunk(k, DeltaMessage(tool_calls=[call]))
            if out.kind == "token":
                if text or logprobs:
                    r = group.results[k]
                    n = len(r.token_ids)
                    lp = _logprobs(state, r, n - 1, n) if logprobs else None
                    yield chunk(k, DeltaMessage(content=text), lp=lp)
            else:
                called = streams[k] is not None and streams[k].calls > 0
                yield chunk(k, DeltaMessage(content=text or None),
                            finish_reason=_finish_reason(out.finish_reason, called))
        if include_usage:
            yield event(ChatCompletionChunk(id=request_id, model=state.model_name, choices=[], usage=usage_of(group)))
    except APIError as e:
        yield event(e.body())
    finally:
        group.close()
    yield DONE
