"""The one place that builds a running service from its settings (as Frigate's ``FrigateApp.start()``):
metrics, the shared inference engine, clip jobs and cameras, in that order, and stops them in reverse.
``amvad serve`` (through :func:`service.app.create_app`) and ``amvad bench`` both use it."""

from __future__ import annotations

import logging

from amvad.runtime.engine import InferenceEngine
from amvad.runtime.redact import redact

from .auth import Auth
from .cameras import CameraManager, CameraStore
from .clips import ClipJobs
from .config import ServiceSettings
from .event_store import EventStore
from .evidence import repair_evidence
from .fit_jobs import FitJobs
from .metrics import Metrics
from .model_registry import ModelRegistry
from .notify import Notifier
from .recordings import Recordings
from .webhooks import ApiWebhooks

log = logging.getLogger("amvad.service")


class Services:
    """Every long-lived part of the service. ``cameras`` is set last, so it marks the service ready;
    ``load_error`` says why starting failed."""

    def __init__(self, settings: ServiceSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.auth = Auth(settings, self.metrics)
        self.models = ModelRegistry.from_settings(settings)
        self.notifier: Notifier | None = None
        self.webhooks: ApiWebhooks | None = None
        self.recordings = Recordings(settings.paths, settings.limits)
        self.events = EventStore(settings.paths.events_db, on_health=self.metrics.store_health)
        repaired = repair_evidence(self.events, settings.paths.evidence_root)
        if any(repaired.values()):
            log.warning("after an unclean stop: %(closed)d event(s) closed, %(attached)d evidence file(s) "
                        "attached, %(removed)d removed", repaired)
        self.fits = FitJobs(settings, self.models, self.recordings, self.events)
        self.engine: InferenceEngine | None = None
        self.clips: ClipJobs | None = None
        self.cameras: CameraManager | None = None
        self.load_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.cameras is not None

    def start(self) -> None:
        """Load the model into the engine, then start clip jobs and every configured or stored camera."""
        s = self.settings
        engine = self.engine = InferenceEngine(self.models.path(None), s.engine, self.metrics)
        self.clips = ClipJobs(engine, s, self.metrics, self.models)
        self.notifier = Notifier(s.notify, self.metrics, f"{'https' if s.tls_cert else 'http'}://{s.host}:{s.port}")
        self.webhooks = ApiWebhooks(s.paths, self.notifier, s.limits)
        cameras = CameraManager(engine, s, self.metrics, CameraStore(s.paths.api_cameras), self.models, self.events,
                                self.notifier)
        # each event keeps its score curve, from the clip's pre-roll on, out of its camera's recent messages
        self.events.follow_scores(lambda camera: cameras.get(camera).recent, s.events.pre_roll_s)
        for cfg in s.cameras:
            cameras.add(cfg)
        restored = cameras.restore({c.id for c in s.cameras})
        self.cameras = cameras
        log.info("model %s loaded (%s on %s, %s %s); %d camera(s) from the config, %d restored: %s",
                 engine.model.path, engine.meta.method, engine.device, engine.model.backend.name,
                 engine.model.precision.used, len(s.cameras), len(restored), ", ".join(restored))

    def start_or_record_error(self) -> None:
        """:meth:`start` for a background thread: a failure is kept in ``load_error`` (readiness says it)."""
        try:
            self.start()
        except Exception as exc:
            self.load_error = redact(f"{type(exc).__name__}: {exc}")
            log.error("cannot start: %s", self.load_error)

    def stop(self) -> None:
        """Fits and recordings, cameras (they feed the engine), clip jobs, then the engine."""
        self.fits.shutdown()
        self.recordings.stop_all()
        if self.cameras:
            self.cameras.stop_all()
        if self.clips:
            self.clips.shutdown()
        if self.notifier:
            self.notifier.stop()
        self.events.close_db()
        if self.engine:
            self.engine.close()
