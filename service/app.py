"""The FastAPI application: builds the services (service/wiring.py) in the background at start-up, so
health answers at once, and mounts one router per resource (service/api/).

Handlers never run inference: decoding, flow and ONNX Runtime run in worker threads (clip jobs, per-camera
ingest/submit/publish threads, the engine's two stages); handlers read results and stream them.
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .api import auth, backup, cameras, clips, events, health, live, models, recordings, users, webhooks
from .api.deps import PUBLIC
from .config import ServiceSettings
from .errors import install_error_handlers
from .wiring import Services

DESCRIPTION = ("Video anomaly detection service: clip scoring, live cameras with WebSocket scores and heatmaps. "
               "Scores: higher = more anomalous; 0 is an average normal training frame; `anomaly` = score >= "
               "threshold.")


def create_app(settings: ServiceSettings, services: Services | None = None) -> FastAPI:
    """``services`` already started (``amvad serve`` starts them first, to fail fast) are used as they are;
    otherwise they start in a background thread and /readyz says when they are ready."""
    svc = services or Services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if not svc.ready:
            threading.Thread(target=svc.start_or_record_error, name="model-load", daemon=True).start()
        yield
        await run_in_threadpool(svc.stop)

    app = FastAPI(title="amvad", description=DESCRIPTION, version="0.1.0", lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.services = svc
    install_error_handlers(app)
    for router in (health.router, auth.router, live.router, clips.router, cameras.router, cameras.websocket_router,
                   models.router, recordings.router, events.router, webhooks.router, backup.router, users.router):
        app.include_router(router)
    mount_docs(app)
    return app


DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"  # Swagger UI 5 (reads OpenAPI 3.1)


def mount_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the assets the ``fastapi-offline`` package ships, so it works offline
    (FastAPI's default loads them from a CDN)."""
    app.mount("/docs-assets", StaticFiles(directory=str(DOCS_ASSETS)), name="docs-assets")

    @app.get("/docs", include_in_schema=False, dependencies=[PUBLIC])
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url, title="amvad API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png")
