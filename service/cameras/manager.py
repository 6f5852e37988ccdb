"""The set of running cameras: add (resolving each camera's model and its schedules' models), restore the
stored ones, change them while they run (``PATCH``, the MQTT arm switch, a new current version of their
model), calibrate (jobs: ``calibration.py``), remove; and the model deletions that must not strand one."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from amvad.runtime.calibration import events_per_hour, pick_threshold
from amvad.runtime.engine import InferenceEngine
from amvad.runtime.errors import Conflict, Invalid, NotFound
from amvad.runtime.exported_model import ExportedModel, file_sha256
from amvad.runtime.video import file_path, is_file_source

from ..config import CameraConfig, CameraPatch, NightConfig, ScheduleConfig, ServiceSettings
from ..event_store import EventStore
from ..metrics import Metrics
from ..model_registry import ModelConflict, ModelRegistry, UnknownModel
from ..notify import Notifier
from ..security import UrlError, check_media_path
from .calibration import Calibrations
from .camera import Camera, CameraNotLive
from .store import CameraStore

log = logging.getLogger("amvad.cameras")


MIN_CALIBRATION_FRAMES = 10


class CameraModelError(Invalid):
    """A camera that names a model the service does not have (HTTP 422)."""


class UnknownCamera(NotFound, KeyError):
    """A camera id that does not exist (HTTP 404)."""


class DuplicateCamera(Conflict, ValueError):
    """A camera id that is already in use (HTTP 409)."""


def training_floor(model: ExportedModel) -> float:
    """The lowest threshold calibration may set without an override: the training scores' quantile the
    model was exported with (a fitted model records it; for the others it is the model's threshold)."""
    meta = model.meta
    return float(meta.training.get("fit", {}).get("training_quantile_threshold", meta.threshold))


class CameraManager:
    """The set of running cameras, keyed by id. Cameras added with ``persist=True`` (the API) are kept in
    ``store`` so they come back after a restart; removing one forgets it, stopping the service does not."""

    def __init__(self, engine: InferenceEngine, settings: ServiceSettings, metrics: Metrics,
                 store: CameraStore | None = None, registry: ModelRegistry | None = None,
                 events: EventStore | None = None, notifier: Notifier | None = None) -> None:
        self.engine, self.settings, self.metrics, self.store = engine, settings, metrics, store
        self.registry = registry or ModelRegistry.from_settings(settings)
        self.events, self.notifier = events, notifier
        self._cameras: dict[str, Camera] = {}
        self._lock = threading.Lock()
        self.calibrations = Calibrations(self, settings.limits.max_calibrations)
        self.registry.listeners.append(self.follow_model)  # a camera on a name runs its current version
        if notifier is not None:
            notifier.on_armed = self.set_armed  # the MQTT switch

    def _model(self, camera_id: str, name: str | None) -> ExportedModel:
        """The loaded model a camera names (None: the service's); loading happens outside the engine."""
        try:
            return self.engine.load(self.registry.path(name))
        except (UnknownModel, Invalid) as exc:  # also a model now refused by the engine's bounds or budget
            raise CameraModelError(f"camera {camera_id!r}: {exc.args[0] if exc.args else exc}") from None

    def _check_profiles(self, camera_id: str, schedules: list[ScheduleConfig], masks: list,
                        night: NightConfig | None = None) -> None:
        """Every model a schedule or the night profile names loads (so a profile switch at night cannot
        fail) and takes the camera's masks; raises 422 naming the field."""
        named = [(f"schedules.{i}.model ({rule.name})", rule.model) for i, rule in enumerate(schedules)]
        for field, name in named + [("night.model", None if night is None else night.model)]:
            if name is None:
                continue
            try:
                model = self._model(camera_id, name)
            except CameraModelError as exc:
                raise CameraModelError(f"{field}: {exc.message}") from None
            if masks and not model.takes_mask:
                raise CameraModelError(f"{field}: camera {camera_id!r} has masks; model {name!r} was exported "
                                       "before masks")

    def add(self, cfg: CameraConfig, persist: bool = False, start: bool = True) -> Camera:
        """``start=False`` leaves the threads to the caller (``camera.start()``), e.g. to subscribe first."""
        url = cfg.url.get_secret_value()
        if is_file_source(url):
            check_media_path(file_path(url), self.settings.media_dirs)
        model = self._model(cfg.id, cfg.model)
        self._check_profiles(cfg.id, cfg.schedules, cfg.masks, cfg.night)
        with self._lock:
            if cfg.id in self._cameras:
                raise DuplicateCamera(f"camera {cfg.id!r} already exists")
            if persist and self.store is not None:
                self.store.put(cfg)  # first, so a camera that cannot be saved is not added
            try:
                cam = Camera(cfg, self.engine, self.settings, self.metrics, model, self.events, self.notifier,
                             resolve_model=lambda name, cam_id=cfg.id: self._model(cam_id, name))
            except ValueError as exc:  # masks on a model exported before masks
                if persist and self.store is not None:
                    self.store.discard(cfg.id)
                raise CameraModelError(f"camera {cfg.id!r}: {exc}") from None
            self._cameras[cfg.id] = cam
        if start:
            cam.start()
        return cam

    def restore(self, yaml_ids: set[str]) -> list[str]:
        """Start the stored API cameras; an id the YAML config also declares is dropped (YAML wins)."""
        if self.store is None:
            return []
        started = []
        for cfg in self.store.load():
            if cfg.id in yaml_ids:
                log.warning("stored camera %s is also declared in the config; the config wins", cfg.id)
                self.store.discard(cfg.id)
                continue
            try:
                self.add(cfg)
            except (UrlError, CameraModelError) as exc:  # e.g. media_dirs changed: keep it, do not start it
                log.warning("stored camera %s not started: %s", cfg.id, exc)
                continue
            started.append(cfg.id)
        return started

    def get(self, camera_id: str) -> Camera:
        try:
            return self._cameras[camera_id]
        except KeyError:
            raise UnknownCamera(f"no camera with id {camera_id!r}") from None

    def remove(self, camera_id: str, forget: bool = True) -> None:
        """Stop a camera; ``forget`` also drops it from the store (DELETE), shutdown keeps it.

        Stopping happens under the lock, so a camera re-added with the same id right after a DELETE
        cannot have its fresh metric series removed by the old camera's clean-up."""
        with self._lock:
            cam = self.get(camera_id)
            if forget and self.store is not None:
                self.store.discard(camera_id)
            del self._cameras[camera_id]
            cam.stop(keep_stats=not forget)

    def update(self, camera_id: str, patch: CameraPatch) -> Camera:
        """Change a running camera's model, threshold, replay rate, arming, schedules or night profile; the
        other cameras never notice. An API camera's new settings are stored (a YAML camera's last until the
        config is read again)."""
        given = patch.model_fields_set
        model = self._model(camera_id, patch.model) if "model" in given else None
        with self._lock:
            cam = self.get(camera_id)
            if model is not None and cam.cfg.masks and not model.takes_mask:
                raise CameraModelError(f"camera {camera_id!r} has masks; model {patch.model!r} was exported before "
                                       f"masks (re-export it with `amvad export --onnx`)")
            schedules = patch.schedules if "schedules" in given else cam.cfg.schedules
            night = patch.night if "night" in given else cam.cfg.night
            if "schedules" in given or "night" in given or patch.masks:
                self._check_profiles(camera_id, schedules, cam.cfg.masks if patch.masks is None else patch.masks,
                                     night)
            if model is not None:
                cam.set_model(patch.model, model)
            if patch.masks is not None:
                try:
                    cam.set_masks(patch.masks)
                except ValueError as exc:
                    raise CameraModelError(f"camera {camera_id!r}: {exc}") from None
            if "threshold" in given:
                cam.set_threshold(patch.threshold)
            if "replay_fps" in given:
                cam.set_replay_fps(patch.replay_fps)
            if "schedules" in given or "timezone" in given:
                cam.set_schedules(schedules, patch.timezone if "timezone" in given else cam.cfg.timezone)
            if "night" in given:
                cam.set_night(patch.night)
            if "armed" in given:
                cam.set_armed(patch.armed)
            if self.store is not None and self.store.has(camera_id):
                self.store.put(cam.cfg)
        return cam

    def set_armed(self, camera_id: str, armed: bool) -> Camera:
        """Arm or disarm a camera now (``PATCH {"armed": ...}``, the MQTT switch, the live page)."""
        return self.update(camera_id, CameraPatch(armed=armed))

    def follow_model(self, name: str) -> list[str]:
        """``name`` has a new current version (registered, fitted, rolled back): every camera running
        ``name`` now (its own model or a schedule's profile) scores its next frames with it, as a PATCH of
        its model would; cameras pinned to a version (``name@N``) stay. The ids of the cameras moved."""
        followers = [c for c in self.list() if c.active_model == name]
        if not followers:
            return []
        model = self._model(followers[0].id, name)
        moved = []
        with self._lock:
            for cam in followers:
                if cam.cfg.masks and not model.takes_mask:
                    log.warning("camera %s stays on its version of %s: it has masks, the new version was exported "
                                "before masks", cam.id, name)
                    continue
                if cam.follow(name, model):
                    moved.append(cam.id)
        return moved

    def calibrate(self, camera_id: str, scores: list[float], seconds: float, false_alarms_per_hour: float,
                  allow_below_training: bool = False) -> dict:
        """Set the camera's threshold from ``scores``, the scores of ``seconds`` of live footage the operator
        vouches is normal (collected by a calibration job): the lowest at which that footage raises at most
        ``false_alarms_per_hour`` events per hour; never below the model's training quantile
        (:func:`training_floor`) unless ``allow_below_training``. A few seconds of footage cannot tell a rate
        of one alarm an hour, so the floor keeps a short calibration from setting a threshold under what
        training already knew to be normal. While the night profile runs, the scores are its model's: they
        set ``night.threshold`` (``sets`` in the result says which)."""
        cam = self.get(camera_id)
        before, model = cam.stream.threshold, cam.stream.model
        scores = np.array(scores)
        if len(scores) < MIN_CALIBRATION_FRAMES:
            raise CameraNotLive(f"camera {camera_id!r} scored only {len(scores)} frames in {seconds:g} s (at least "
                                f"{MIN_CALIBRATION_FRAMES} needed); calibrate once it is live")
        fps = len(scores) / seconds
        floor = -np.inf if allow_below_training else training_floor(model)
        picked = pick_threshold([scores], [fps], false_alarms_per_hour, events=self.settings.events)
        threshold = max(picked, floor)
        # at night the scores are the night model's: they set the night profile's threshold, not the day's
        night = cam.cfg.night if cam.night_profile else None
        sets = "threshold" if night is None else "night.threshold"
        self.update(camera_id, CameraPatch(threshold=threshold) if night is None
                    else CameraPatch(night=night.model_copy(update={"threshold": threshold})))
        return {"camera": camera_id, "sets": sets, "seconds": seconds, "frames": len(scores), "fps": round(fps, 2),
                "footage_seconds": round(len(scores) / fps, 1), "threshold_before": before, "threshold": threshold,
                "threshold_from_footage": picked, "floor": None if allow_below_training else floor,
                "floored": bool(threshold > picked), "target_false_alarms_per_hour": false_alarms_per_hour,
                "false_alarms_per_hour_on_this_footage": events_per_hour([scores], [fps], threshold,
                                                                         self.settings.events),
                "score_max": float(scores.max()), "score_p99": float(np.percentile(scores, 99))}

    def _files_used_by(self, cam: Camera) -> set:
        """The model files a camera refers to: its own model, the one running now, its schedules', its
        night profile's."""
        used = set()
        night = None if cam.cfg.night is None else cam.cfg.night.model
        for ref in {cam.model_name, cam.cfg.model, night, *(s.model for s in cam.cfg.schedules)} - {None}:
            try:
                used.add(self.registry.path(ref))
            except (UnknownModel, FileNotFoundError):  # a profile's model deleted meanwhile: nothing to protect
                continue
        return used

    def remove_model(self, ref: str) -> list[str]:
        """Delete a registered model (every version) or one version (``name@N``) unless a camera uses it:
        runs it, has it as its model (``name`` uses the current version), in a schedule or in its night
        profile. Checked and done under the cameras' lock; the files deleted."""
        with self._lock:
            doomed = set(self.registry.files(ref))
            shas = {file_sha256(p) for p in doomed}
            users = sorted(c.id for c in self._cameras.values()
                           if doomed & self._files_used_by(c) or c.stream.model.sha256 in shas)
            if users:
                raise ModelConflict(f"model {ref!r} is used by camera(s) {users} (as their model, the current "
                                    f"version of it, or in a schedule or night profile); assign them another first")
            removed = self.registry.remove(ref)
            for sha in shas:
                self.engine.unload(sha)
        return [p.name for p in removed]

    def list(self) -> list[Camera]:
        return list(self._cameras.values())

    def refresh_metrics(self) -> None:
        now = time.time()
        for cam in list(self._cameras.values()):
            if cam.last_frame_time is not None:
                self.metrics.since_last.labels(cam.id).set(now - cam.last_frame_time)

    def stop_all(self) -> None:
        self.calibrations.shutdown()
        for cam in self.list():
            cam.signal_stop()
        for cam in self.list():
            self.remove(cam.id, forget=False)
