"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

OpenAI clients parse this body to raise their typed errors, so every failure
the server answers (bad JSON, bad values, unknown model, missing key) uses it,
including FastAPI's own validation errors, which would otherwise be a 422
with a different body.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ferrolm.server.protocol import ErrorInfo, ErrorResponse

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          500: "server_error", 503: "server_error"}


class APIError(Exception):
    """Raised by handlers; becomes a JSON error response with ``status``."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The error as OpenAI's response body (also a stream's last event)."""
        return error_body(self.message, self.status, self.param, self.code, self.type)

    def copy(self) -> APIError:
        """The same error, fresh (one instance raised by many requests would chain their tracebacks)."""
        return APIError(self.message, self.status, self.param, self.code, self.type, self.headers)


def error_body(message: str, status: int = 400, param: str | None = None, code: str | None = None,
               type: str | None = None) -> dict[str, Any]:
    info = ErrorInfo(message=_printable(message), type=type or _TYPES.get(status, "invalid_request_error"),
                     param=None if param is None else _printable(param), code=code)
    return ErrorResponse(error=info).model_dump()


def _printable(text: str) -> str:
    """``text`` as valid UTF-8: messages quote what the client sent, and a
    lone surrogate (valid in JSON's ``\\ud800``, not in UTF-8) would make the
    error itself fail to render, a 500; it is shown escaped instead."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    # One readable line per problem, e.g. "body.max_tokens: Input should be a valid integer".
    parts, param = [], None
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if param is None and loc:
            param = loc[0]
        parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", param


def install(app: FastAPI) -> None:
    """Registers the handlers that turn every error into OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI answers malformed bodies with 400, not FastAPI's 422.
        message, param = _validation_message(exc)
        return JSONResponse(error_body(message, 400, param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), exc.status_code), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))
