"""Optional bearer-key auth for inference and admin routes (constant-time comparison)."""

from __future__ import annotations

import hmac

from fastapi import Request

from service.errors import Unauthorized


def require_api_key(request: Request) -> None:
    """FastAPI dependency: passes when no CLIP_API_KEY is set or the bearer token matches it."""
    key = request.app.state.settings.api_key
    if not key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <CLIP_API_KEY>'")
