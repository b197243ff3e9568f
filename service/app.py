"""The app factory: settings -> FastAPI app with routes, error handlers, middleware and lifecycle."""

from __future__ import annotations

import logging
from collections import OrderedDict
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from service import schemas
from service.backends import load_backend
from service.errors import install_error_handlers
from service.lifecycle import BackendFactory, Lifecycle
from service.metrics import Metrics
from service.middleware import AccessLog, BodyLimit
from service.routes import classify, embed, health, labelsets
from service.settings import Settings

log = logging.getLogger("service")
REQUEST_MODELS = (schemas.EmbedImagesRequest, schemas.EmbedTextsRequest, schemas.ClassifyRequest,
                  schemas.LabelSetRequest)


def create_app(settings: Optional[Settings] = None, backend_factory: BackendFactory = load_backend) -> FastAPI:
    """Build the app. The model loads in the background after start-up; /readyz says when it is ready."""
    settings = settings or Settings()
    metrics = Metrics()
    lifecycle = Lifecycle(settings, metrics, backend_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        log.info("configuration: %s", settings.describe())
        lifecycle.start()
        yield
        await lifecycle.stop()

    app = FastAPI(title="clip-serve", version="0.1.0", lifespan=lifespan,
                  description="CLIP image and text embeddings and zero-shot classification.")
    app.state.settings, app.state.metrics, app.state.lifecycle = settings, metrics, lifecycle
    app.state.labelsets = OrderedDict()
    install_error_handlers(app)
    for router in (health.router, embed.router, classify.router, labelsets.router):
        app.include_router(router)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "PUT",
                           "DELETE"], allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLog, metrics=metrics, lifecycle=lifecycle)
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
