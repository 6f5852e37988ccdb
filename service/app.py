"""The FastAPI application: builds the services (service/wiring.py) in the background at start-up, so
health answers at once, and mounts one router per resource (service/api/).

Handlers never run inference: decoding, flow and ONNX Runtime run in worker threads (clip jobs, per-camera
ingest/submit/publish threads, the engine's two stages); handlers read results and stream them.
"""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from .api import cameras, clips, health, live
from .config import ServiceSettings
from .errors import install_error_handlers
from .wiring import Services

DESCRIPTION = ("Video anomaly detection service: clip scoring, live cameras with WebSocket scores and heatmaps. "
               "Scores: higher = more anomalous; 0 is an average normal training frame; `anomaly` = score >= "
               "threshold.")


def create_app(settings: ServiceSettings, services: Services | None = None) -> FastAPI:
    svc = services or Services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=svc.start_or_record_error, name="model-load", daemon=True).start()
        yield
        await run_in_threadpool(svc.stop)

    app = FastAPI(title="amvad", description=DESCRIPTION, version="0.1.0", lifespan=lifespan)
    app.state.services = svc
    install_error_handlers(app)
    for router in (health.router, live.router, clips.router, cameras.router, cameras.websocket_router):
        app.include_router(router)
    return app
