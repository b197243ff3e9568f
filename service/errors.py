"""Domain errors and the one place that maps them to HTTP: {"error": {"type", "message"}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("service.errors")


class ApiError(Exception):
    """Base of every error a route may raise; `status` and `type` go to the client."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadInput(ApiError):
    status, type = 400, "invalid_input"


class Unauthorized(ApiError):
    status, type = 401, "unauthorized"


class NotFound(ApiError):
    status, type = 404, "not_found"


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


def error_body(type_: str, message: str) -> dict:
    return {"error": {"type": type_, "message": message}}


def error_response(exc: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    if exc.status == 503:
        headers["Retry-After"] = str(max(1, round(exc.retry_after or 1)))
    return JSONResponse(error_body(exc.type, exc.message), status_code=exc.status, headers=headers)


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
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body("invalid_request", _validation_message(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(kind, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", "internal server error"), status_code=500)
