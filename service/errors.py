"""Domain errors and the one place that maps them to HTTP: {"error": {"type", "message"}}.

Paths under /v1 (the OpenAI-compatible API) get OpenAI's shape instead, {"error": {"message", "type", "param",
"code"}}, so OpenAI clients raise their usual exceptions; `code` carries our specific type.

An error knows where in the request it lies as data (`field`, `index`), set where that is known; it is written
into the message here, once: "images[3]: not valid base64" (ours), or the same with OpenAI's `param` = the field.
"""

from __future__ import annotations

import logging
from typing import Self

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service import tracing

log = logging.getLogger("service.errors")


class ApiError(Exception):
    """Base of every error a route may raise; `status` and `type` go to the client."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None, field: str | None = None,
                 index: int | None = None):
        super().__init__(message)
        self.message = message  # what went wrong, without its place in the request
        self.retry_after = retry_after
        self.field = field  # the offending request field, when one is to blame (OpenAI's `param`)
        self.index = index  # the offending item of that field (a list), when one item is to blame

    def at(self, field: str, index: int | None = None) -> Self:
        """This error, placed at `field` (item `index`); returns itself, for `raise exc.at(...)`."""
        self.field, self.index = field, index
        return self

    @property
    def located_message(self) -> str:
        """The message as clients read it: prefixed with the item it concerns, when one does."""
        return self.message if self.index is None else f"{self.field}[{self.index}]: {self.message}"

    def __str__(self) -> str:  # logs and tracebacks read as the client does
        return self.located_message


class BadInput(ApiError):
    status, type = 400, "invalid_input"


class UrlRefused(BadInput):
    """An image URL this server will not fetch: not https, host not allowed, or a non-public address."""

    type = "url_refused"


class UrlFetchFailed(BadInput):
    """An allowed image URL that did not give an image: unreachable, too slow, not 200, too many redirects."""

    type = "url_fetch_failed"


class Unauthorized(ApiError):
    status, type = 401, "unauthorized"


class NotFound(ApiError):
    status, type = 404, "not_found"


class ModelNotFound(NotFound):
    type = "model_not_found"


class PayloadTooLarge(ApiError):
    status, type = 413, "payload_too_large"


class UnsupportedMedia(ApiError):
    status, type = 415, "unsupported_media_type"


class InvalidField(ApiError):
    status, type = 422, "invalid_request"


class Overloaded(ApiError):
    status, type = 503, "overloaded"


class NotReady(ApiError):
    status, type = 503, "not_ready"


class DeadlineExceeded(ApiError):
    status, type = 503, "deadline_exceeded"


class BackendFailure(ApiError):
    status, type = 503, "backend_error"


class ClientGone(ApiError):
    """The client closed the connection before its answer (nginx's 499): logged and counted, never sent."""

    status, type = 499, "client_closed_request"


def error_body(type_: str, message: str) -> dict:
    return {"error": {"type": type_, "message": message}}


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


OPENAI_CODES = {"unauthorized": "invalid_api_key"}  # our type -> OpenAI's code, where OpenAI has its own word


def openai_error_body(status: int, type_: str, message: str, param: str | None = None) -> dict:
    """OpenAI's shape: `type` is the broad class (invalid_request_error / server_error), `code` the precise one."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": OPENAI_CODES.get(type_, type_)}}


def error_payload(path: str, status: int, type_: str, message: str, param: str | None = None) -> dict:
    """The error body for a request to `path`: OpenAI's shape under /v1, ours elsewhere."""
    if is_openai_path(path):
        return openai_error_body(status, type_, message, param)
    return error_body(type_, message)


def error_response(exc: ApiError, path: str = "") -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.status == 503:
        headers["Retry-After"] = str(max(1, round(exc.retry_after or 1)))
    return JSONResponse(error_payload(path, exc.status, exc.type, exc.located_message, exc.field),
                        status_code=exc.status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves the server in the same JSON shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        tracing.record_error(exc)  # on the request's span, when tracing is on
        return error_response(exc, request.scope["path"])

    @app.exception_handler(ClientDisconnect)
    async def _client_disconnect(request: Request, exc: ClientDisconnect):  # left while sending the body
        return error_response(ClientGone("client closed the connection while sending the body"), request.scope["path"])

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return JSONResponse(error_payload(request.scope["path"], 422, "invalid_request", _validation_message(exc)),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_payload(request.scope["path"], exc.status_code, kind, str(exc.detail)),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.scope["path"])
        return JSONResponse(error_payload(request.scope["path"], 500, "internal_error", "internal server error"),
                            status_code=500)
