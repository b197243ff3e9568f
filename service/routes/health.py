"""Liveness, readiness, model info and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.request_scope import lifecycle, settings
from service.schemas import InfoResponse
from service.templates import BUILT_IN

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: 200 while the process serves HTTP (never touches the model)")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: 200 once the model is loaded and warmed up; 503 otherwise",
            responses={503: {"description": "loading, draining or failed"}})
async def readyz(request: Request) -> JSONResponse:
    lc = lifecycle(request)
    if lc.is_ready():
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "not_ready", "reason": lc.readiness_reason()}, status_code=503,
                        headers={"Retry-After": "5"})


@router.get("/info", response_model=InfoResponse, summary="The loaded model, backend and limits",
            responses={503: {"description": "model not loaded yet"}})
async def info(request: Request) -> dict:
    lc, s = lifecycle(request), settings(request)
    engine = lc.require_engine() if not lc.engine else lc.engine
    return {**engine.backend.describe(), "ready": lc.is_ready(),
            "batching": {"image_max_batch": engine.images.max_batch, "image_max_wait_ms": s.image_max_wait_ms,
                         "text_max_batch": engine.texts.max_batch, "text_max_wait_ms": s.text_max_wait_ms,
                         "max_queue": s.max_queue, "request_timeout_s": s.request_timeout_s,
                         "measured": {m: c.to_dict() for m, c in engine.curves.items()}},
            "limits": {"max_body_bytes": s.max_body_bytes, "max_images_per_request": s.max_images_per_request,
                       "max_texts_per_request": s.max_texts_per_request, "max_labels": s.max_labels,
                       "max_templates": s.max_templates, "max_prompts": s.max_prompts,
                       "max_image_pixels": s.max_image_pixels},
            "template_sets": sorted(BUILT_IN)}


@router.get("/metrics", summary="Prometheus exposition", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
