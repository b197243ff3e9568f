"""Optional bearer-key auth (CLIP_API_KEY), compared in constant time.

The dependency sits on the whole app, so every API route needs the key, including routes added later; open
are only the paths in CLIP_PUBLIC_PATHS (default /healthz, /readyz, /metrics) and the pages that are not
part of the API schema (the demo page and the docs, which browsers load without headers).
"""

from __future__ import annotations

import hmac

from fastapi import Request

from service.errors import Unauthorized


def is_public(request: Request) -> bool:
    # The raw ASGI path, never request.url.path: Starlette before 1.0.1 rebuilt request.url from the Host
    # header, so `Host: x/healthz?` made every path look like /healthz (GHSA-86qp-5c8j-p5mr). scope["path"]
    # is the path of the request line, the one the router matches: the route checked is the route served.
    if request.scope["path"] in request.app.state.settings.public_paths:
        return True
    route = request.scope.get("route")
    return route is not None and not getattr(route, "include_in_schema", True)


async def require_api_key(request: Request) -> None:
    """FastAPI dependency: passes when no CLIP_API_KEY is set, the path is public, or the bearer token matches.
    async on purpose: FastAPI runs plain-def dependencies in a thread pool, a hop every request would pay."""
    key = request.app.state.settings.api_key
    if not key or is_public(request):
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    # compare_digest on bytes of possibly different lengths still takes time independent of where they differ
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <CLIP_API_KEY>'")
