"""OpenAI tool calling for ``/v1/chat/completions``: the request's ``tools``,
``tool_choice`` and ``parallel_tool_calls`` handed to the core's
``ToolCalling`` (which detects the model's tool format from its chat
template, prepares the history, forces calls with a grammar and parses
them out), and its results in OpenAI's response and chunk shapes.
"""

from __future__ import annotations

import json
from typing import Any

from ferrolm import _core
from ferrolm.server.errors import APIError
from ferrolm.server.protocol import ChatCompletionRequest, FunctionCall, ToolCall, ToolCallDelta


class Tools:
    """One request's tool calling; ``None`` from :func:`tools_of` when it has none."""

    def __init__(self, calling: _core.ToolCalling, parses: bool) -> None:
        self._calling = calling
        # tool_choice "none": the tools are hidden from the model and its text is all content.
        self.parses = parses

    def prepare(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The history made ready for the template (arguments parsed back to objects, ...)."""
        return json.loads(self._call(self._calling.prepare_messages, json.dumps(messages)))

    def template_kwargs(self) -> dict[str, Any]:
        return json.loads(self._calling.template_kwargs())

    def constraint(self) -> dict[str, Any] | None:
        """The grammar that forces a call (``tool_choice`` required or named), else None."""
        c = self._calling.constraint()
        return None if c is None else json.loads(c)

    def parse(self, text: str) -> tuple[str | None, list[ToolCall]]:
        content, calls = self._calling.parse(text)
        return content, [_call(*c) for c in calls]

    def stream(self) -> ToolStream:
        return ToolStream(self._calling.stream_parser())

    @staticmethod
    def _call(f, *args):
        try:
            return f(*args)
        except ValueError as e:
            raise APIError(str(e), param="messages") from None


class ToolStream:
    """Splits one choice's streamed text into content and tool-call deltas."""

    def __init__(self, parser: Any) -> None:
        self._parser = parser
        self.calls = 0

    def push(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        return self._split(self._parser.push(text))

    def finish(self) -> tuple[str, list[ToolCallDelta]]:
        return self._split(self._parser.finish())

    def _split(self, events: list[tuple[str, Any]]) -> tuple[str, list[ToolCallDelta]]:
        content, deltas = [], []
        for kind, value in events:
            if kind == "content":
                content.append(value)
            else:
                call = _call(*value)
                deltas.append(ToolCallDelta(index=self.calls, id=call.id, function=call.function))
                self.calls += 1
        return "".join(content), deltas


def tools_of(req: ChatCompletionRequest, template: str | None) -> Tools | None:
    """The request's tool calling, checked; None when it asks for none."""
    for old, new in (("functions", "tools"), ("function_call", "tool_choice")):
        if getattr(req, old) is not None:
            raise APIError(f"`{old}` is deprecated by OpenAI and not supported: use `{new}`", param=old)
    if not req.tools:
        if req.tool_choice not in (None, "none", "auto"):
            raise APIError("tool_choice needs tools", param="tool_choice")
        return None
    try:
        calling = _core.ToolCalling(template, json.dumps(req.tools),
                                    None if req.tool_choice is None else json.dumps(req.tool_choice),
                                    req.parallel_tool_calls is not False)
    except ValueError as e:
        raise APIError(str(e), param="tool_choice" if "tool_choice" in str(e) else "tools") from None
    return Tools(calling, parses=req.tool_choice != "none")


def _call(call_id: str, name: str, arguments: str) -> ToolCall:
    return ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))
