"""The FastAPI application: health, metrics, clip uploads, cameras, WebSocket scores and the live page.

Handlers never run inference: decoding, flow and ONNX Runtime run in worker threads (clip jobs, one
ingest and one inference thread per camera); handlers read results and stream them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import tempfile
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from .batching import InferenceEngine
from .camera_store import CameraStore
from .cameras import CameraManager, UnknownCamera
from .clips import ClipJobs, ClipTooLarge, plot_png, probe_clip
from .config import CameraConfig, ServiceSettings
from .errors import error, install_error_handlers
from .metrics import Metrics
from .security import redact

log = logging.getLogger("amvad.service")
PAGE = Path(__file__).parent / "static" / "live.html"
UPLOAD_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {"file": {"type": "string", "format": "binary"}}}}}}}


class ServiceState:
    """What the handlers share; ``engine``, ``cameras`` and ``clips`` exist once the model has loaded."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings, self.metrics = settings, Metrics()
        self.engine: InferenceEngine | None = None
        self.cameras: CameraManager | None = None
        self.clips: ClipJobs | None = None
        self.load_error: str | None = None

    def load(self) -> None:
        try:
            engine = self.engine = InferenceEngine(self.settings.model, self.settings.engine, self.metrics)
            cameras = CameraManager(engine, self.settings, self.metrics,
                                    CameraStore(self.settings.state_dir))
            self.clips = ClipJobs(engine, self.settings, self.metrics)
            for cfg in self.settings.cameras:
                cameras.add(cfg)
            restored = cameras.restore({c.id for c in self.settings.cameras})
            self.cameras = cameras
            log.info("model %s loaded (%s on %s); %d camera(s) from the config, %d restored: %s",
                     engine.model.path, engine.meta.method, engine.device, len(self.settings.cameras),
                     len(restored), ", ".join(restored))
        except Exception as exc:
            self.load_error = redact(f"{type(exc).__name__}: {exc}")
            log.error("cannot start: %s", self.load_error)


def create_app(settings: ServiceSettings) -> FastAPI:
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, name="model-load", daemon=True).start()
        yield
        if state.cameras:
            await run_in_threadpool(state.cameras.stop_all)
        if state.clips:
            state.clips.shutdown()
        if state.engine:
            state.engine.close()

    app = FastAPI(title="amvad", description="Video anomaly detection service: clip scoring, live cameras "
                  "with WebSocket scores and heatmaps. Scores: higher = more anomalous; 0 is an average normal "
                  "training frame; `anomaly` = score >= threshold.", version="0.1.0", lifespan=lifespan)
    app.state.service = state
    install_error_handlers(app)

    def key_ok(given: str | None) -> bool:
        want = settings.api_key
        return want is None or (given is not None and secrets.compare_digest(given, want.get_secret_value()))

    def given_key(conn: Request | WebSocket) -> str | None:
        """The key a client sent: X-API-Key header, Authorization: Bearer, or ?api_key= (HTTP and WS)."""
        auth = conn.headers.get("authorization", "")
        bearer = auth[7:] if auth.lower().startswith("bearer ") else None
        return conn.headers.get("x-api-key") or bearer or conn.query_params.get("api_key")

    async def require_key(request: Request) -> None:
        if not key_ok(given_key(request)):
            raise HTTPException(401, "missing or wrong API key (X-API-Key header)")

    def ready() -> ServiceState:
        if state.cameras is None:
            raise HTTPException(503, state.load_error or "model is still loading")
        return state

    guarded = [Depends(require_key)]

    @app.get("/healthz", summary="liveness")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="ready once the model is loaded")
    def readyz():
        if state.cameras is None:
            return error(503, state.load_error or "model is still loading")
        return {"status": "ready", "model": state.engine.meta.method, "threshold": state.engine.meta.threshold,
                "device": str(state.engine.device)}

    @app.get("/metrics", summary="Prometheus metrics")
    def metrics() -> Response:
        if state.cameras:
            state.cameras.refresh_metrics()
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse, summary="live page", dependencies=guarded)
    def live_page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text())

    @app.post("/v1/clips", status_code=202, dependencies=guarded, openapi_extra=UPLOAD_DOC,
              summary="score an uploaded video (multipart field 'file')")
    async def upload_clip(request: Request, wait: bool = False, heatmaps: bool = False):
        st = ready()
        limit = int(settings.limits.max_upload_mb * 2 ** 20)
        if int(request.headers.get("content-length") or 0) > limit + 2 ** 16:
            raise ClipTooLarge(f"upload is larger than the limit of {settings.limits.max_upload_mb:g} MB")
        form = await request.form(max_files=1, max_fields=4)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "multipart form field 'file' with the video is required")
        path = await run_in_threadpool(save_upload, upload.file, limit, settings.limits.max_upload_mb)
        try:
            probe = await run_in_threadpool(probe_clip, path, settings)
        except Exception:
            path.unlink(missing_ok=True)
            raise
        job = st.clips.submit(path, upload.filename or "upload", probe, heatmaps)
        if not wait:
            return job.status_dict()
        await asyncio.wrap_future(job.future)
        if job.status == "failed":
            return error(422, f"scoring failed: {job.error}", id=job.id)
        return JSONResponse(job.status_dict(), status_code=200)

    @app.get("/v1/clips/{job_id}", dependencies=guarded, summary="clip job status and result")
    def clip_status(job_id: str) -> dict:
        return ready().clips.get(job_id).status_dict()

    @app.get("/v1/clips/{job_id}/plot.png", dependencies=guarded, summary="score curve as PNG")
    async def clip_plot(job_id: str) -> Response:
        job = ready().clips.get(job_id)
        if job.result is None:
            raise HTTPException(409, f"clip job {job_id} is {job.status}; no result yet")
        png = await run_in_threadpool(plot_png, job.result, job.filename)
        return Response(png, media_type="image/png")

    @app.get("/v1/clips/{job_id}/frames/{frame_id}/heatmap.jpg", dependencies=guarded,
             summary="heatmap overlay of one frame (upload with ?heatmaps=true)")
    def clip_heatmap(job_id: str, frame_id: int) -> Response:
        job = ready().clips.get(job_id)
        if frame_id not in job.heatmap_jpegs:
            raise HTTPException(404, f"no heatmap for frame {frame_id} of job {job_id} "
                                     f"(upload with ?heatmaps=true; warm-up frames have none)")
        return Response(job.heatmap_jpegs[frame_id], media_type="image/jpeg")

    @app.post("/v1/cameras", status_code=201, dependencies=guarded, summary="add a camera")
    async def add_camera(cfg: CameraConfig) -> dict:
        """The camera is kept in the state directory and restarted with the service until deleted."""
        return (await run_in_threadpool(ready().cameras.add, cfg, True)).status()

    @app.get("/v1/cameras", dependencies=guarded, summary="all cameras and their states")
    def list_cameras() -> list[dict]:
        return [c.status() for c in ready().cameras.list()]

    @app.get("/v1/cameras/{camera_id}", dependencies=guarded, summary="one camera's state")
    def get_camera(camera_id: str) -> dict:
        return ready().cameras.get(camera_id).status()

    @app.delete("/v1/cameras/{camera_id}", dependencies=guarded, summary="stop and remove a camera (also after a restart)")
    async def delete_camera(camera_id: str) -> dict:
        await run_in_threadpool(ready().cameras.remove, camera_id)
        return {"deleted": camera_id}

    @app.get("/v1/cameras/{camera_id}/events", dependencies=guarded, summary="recent anomaly events")
    def camera_events(camera_id: str) -> list[dict]:
        return [e.to_dict() for e in ready().cameras.get(camera_id).pipeline.events.events]

    @app.get("/v1/cameras/{camera_id}/scores", dependencies=guarded, summary="recent per-frame messages")
    def camera_scores(camera_id: str, limit: int = Query(300, ge=1, le=600)) -> list[dict]:
        return list(ready().cameras.get(camera_id).recent)[-limit:]

    @app.get("/v1/cameras/{camera_id}/heatmap.jpg", dependencies=guarded, summary="latest heatmap overlay")
    async def camera_heatmap(camera_id: str) -> Response:
        jpeg = await run_in_threadpool(ready().cameras.get(camera_id).heatmap_jpeg)
        if jpeg is None:
            raise HTTPException(404, f"camera {camera_id} has no scored frame yet")
        return Response(jpeg, media_type="image/jpeg")

    @app.websocket("/v1/cameras/{camera_id}/ws")
    async def camera_ws(websocket: WebSocket, camera_id: str, heatmap: bool = False) -> None:
        await websocket.accept()
        try:
            if not key_ok(given_key(websocket)):
                raise PermissionError("missing or wrong API key (api_key query parameter)")
            cam = ready().cameras.get(camera_id)
        except (PermissionError, HTTPException, UnknownCamera) as exc:
            msg = exc.detail if isinstance(exc, HTTPException) else (exc.args[0] if exc.args else str(exc))
            await websocket.send_json({"error": str(msg)})
            await websocket.close(code=1008)
            return
        client = cam.broadcaster.subscribe(heatmap)
        receiver = asyncio.create_task(_drain(websocket))
        try:
            while not receiver.done():
                getter = asyncio.create_task(client.queue.get())
                done, _ = await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                await websocket.send_text(getter.result())
        except (WebSocketDisconnect, RuntimeError) as exc:  # the client went away mid-send: normal end
            log.debug("camera %s: WebSocket client left (%s)", camera_id, type(exc).__name__)
        finally:
            receiver.cancel()
            cam.broadcaster.unsubscribe(client)

    return app


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) client messages until it disconnects."""
    try:
        while True:
            if (await websocket.receive())["type"] == "websocket.disconnect":
                return
    except (WebSocketDisconnect, RuntimeError):
        return


def save_upload(src: BinaryIO, limit: int, limit_mb: float) -> Path:
    """Copy an upload to a temporary file, refusing more than ``limit`` bytes."""
    fd, name = tempfile.mkstemp(prefix="amvad-upload-", suffix=".bin")
    path, total = Path(name), 0
    with os.fdopen(fd, "wb") as dst:
        while chunk := src.read(2 ** 20):
            total += len(chunk)
            if total > limit:
                dst.close()
                path.unlink(missing_ok=True)
                raise ClipTooLarge(f"upload is larger than the limit of {limit_mb:g} MB")
            dst.write(chunk)
    return path
