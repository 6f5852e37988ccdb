"""Liveness, readiness and Prometheus metrics (no API key: probes and scrapers call them)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ..errors import error
from .deps import PUBLIC, services

router = APIRouter(dependencies=[PUBLIC])


@router.get("/healthz", summary="liveness")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="ready once the model is loaded")
def readyz(request: Request):
    svc = services(request)
    if not svc.ready:
        return error(503, svc.load_error or "model is still loading")
    model = svc.engine.model
    return {"status": "ready", "model": svc.engine.meta.method, "threshold": svc.engine.meta.threshold,
            "device": str(svc.engine.device), "backend": model.backend.name, "precision": model.precision.used,
            "precision_note": model.precision.note}


@router.get("/metrics", summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    svc = services(request)
    if svc.ready:
        svc.cameras.refresh_metrics()
    return Response(svc.metrics.render(), media_type="text/plain; version=0.0.4")
