"""The app factory: settings -> FastAPI app with routes, error handlers, middleware and lifecycle."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Optional, Sequence

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from service import schemas, tracing
from service.auth import require_api_key
from service.backends import load_backend
from service.errors import install_error_handlers
from service.labelset_store import LabelSets, LabelSetStore, LocalLabelSets
from service.lifecycle import BackendFactory, Lifecycle
from service.metrics import Metrics
from service.middleware import AccessLog, BodyLimit, ConnectionCap
from service.routes import classify, embed, health, labelsets, openai_compat
from service.settings import Settings
from service.urls import UrlFetcher
from service.web import install_web

log = logging.getLogger("service")
# FastAPI's native telemetry (0.165, installed here) instruments every request itself when a global OpenTelemetry
# provider is set (e.g. under opentelemetry-instrument): our tracing (service/tracing.py, TraceRequests, its own
# provider) already makes the request spans, and FastAPI's check of the global providers on every request was 2-4 %
# of a front-end's CPU under load. Older FastAPI keeps unknown keyword arguments in `app.extra`.
FASTAPI_TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False}
REQUEST_MODELS = (schemas.EmbedImagesRequest, schemas.EmbedTextsRequest, schemas.ClassifyRequest,
                  schemas.LabelSetRequest, schemas.OpenAIEmbeddingsRequest)


def create_app(settings: Optional[Settings] = None, backend_factory: BackendFactory = load_backend,
               engines: Sequence[str] = ()) -> FastAPI:
    """Build the app. The model loads in the background after start-up; /readyz says when it is ready. With
    `engines` (ZeroMQ addresses of engine processes, service/supervisor.py) the app is a front-end: the model,
    batchers, caches and label sets are theirs."""
    settings = settings or Settings()
    tracing.setup(settings)  # TracingUnavailable (the remedy in its message) if asked for and not installed
    metrics = Metrics()
    lifecycle: Lifecycle
    if engines:
        from service.engine_client import RemoteLabelSets, RemoteLifecycle

        lifecycle = RemoteLifecycle(settings, metrics, engines)
        store: LabelSets = RemoteLabelSets(lifecycle)
    else:
        lifecycle = Lifecycle(settings, metrics, backend_factory)
        store = LocalLabelSets(LabelSetStore(settings.max_labelsets, int(settings.labelset_cache_mb * 1024 * 1024)))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("configuration: %s", settings.describe())
        log.info("tracing: %s", tracing.describe())
        lifecycle.start()
        yield
        await lifecycle.stop()
        tracing.shutdown()  # export the spans still buffered

    # require_api_key on the app: every API route, including ones added later, needs the key when one is set
    app = FastAPI(title="clip-serve", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="CLIP image and text embeddings and zero-shot classification.",
                  dependencies=[Depends(require_api_key)], telemetry=FASTAPI_TELEMETRY_OFF)
    app.state.settings, app.state.metrics, app.state.lifecycle = settings, metrics, lifecycle
    app.state.url_fetcher = UrlFetcher.from_settings(settings)  # None unless CLIP_ALLOW_URLS
    app.state.labelsets = store
    install_error_handlers(app)
    for router in (health.router, embed.router, classify.router, labelsets.router, openai_compat.router):
        app.include_router(router)
    install_web(app)  # demo page at /, offline /docs and /redoc (no CDN)
    app.add_middleware(embed.FastImagePath)  # innermost of ours: POST /embed/image's plain file parts, routerless
    app.add_middleware(ConnectionCap)  # connections over CLIP_MAX_CONNECTIONS: 503 before any work
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLog, metrics=metrics, lifecycle=lifecycle)
    if tracing.enabled():  # outside the others: their early answers (413, 503) get a request span too
        app.add_middleware(tracing.TraceRequests)
    if settings.cors_origins:  # added last = outermost: the 413s and 503s answered early carry CORS headers too
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "PUT",
                           "DELETE"], allow_headers=["Authorization", "Content-Type"], expose_headers=["Retry-After"])
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema plus the request bodies our routes parse themselves (JSON or multipart)."""
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in REQUEST_MODELS:
        components[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
    app.openapi_schema = spec
    return spec
