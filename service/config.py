"""Service configuration: one typed tree read from a YAML file and ``AMVAD_*`` environment variables.

Environment wins over YAML (e.g. ``AMVAD_API_KEY``, ``AMVAD_MODEL``, ``AMVAD_PORT``); nested fields use
``__`` (``AMVAD_LIMITS__MAX_UPLOAD_MB=50``).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from amvad.runtime.conditioning import GREY_CHROMA
from amvad.runtime.engine import EngineConfig
from amvad.runtime.events import EventConfig
from amvad.runtime.masks import check_polygons
from amvad.runtime.redact import redact
from amvad.runtime.scoring import DEFAULT_FORGET

from .security import ALLOWED_SCHEMES, validate_url
from .state import StatePaths

CAMERA_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
TIME_OF_DAY = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


class ScheduleConfig(BaseModel):
    """A weekly time window of one camera, in the camera's time zone: while it is in force it arms or
    disarms the camera and/or selects a profile (model, threshold). ``days`` are the days it *starts*
    on; an ``end`` not after ``start`` ends the next day (22:00-06:00), ``start == end`` is 24 hours."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field("", pattern=r"^[A-Za-z0-9_.-]{0,32}$", description="shown as `armed_by: schedule <name>`; "
                      "default <start>-<end>")
    days: list[Day] = Field(list(DAYS), min_length=1, max_length=7, description="mon, tue, wed, thu, fri, sat, "
                            "sun; default every day")
    start: str = Field(description="HH:MM, the camera's local time")
    end: str = Field(description="HH:MM (24:00 = midnight at the end of the day)")
    armed: bool | None = Field(None, description="true arms, false disarms the camera in this window; "
                               "null leaves arming alone")
    model: str | None = Field(None, max_length=72, description="profile: the model scoring in this window")
    threshold: float | None = Field(None, allow_inf_nan=False, description="profile: the threshold in this "
                                    "window; default the profile model's own (or the camera's, without a model)")

    @field_validator("start", "end")
    @classmethod
    def _time_of_day(cls, v: str, info) -> str:
        if not (TIME_OF_DAY.fullmatch(v) or (info.field_name == "end" and v == "24:00")):
            raise ValueError(f"expected HH:MM from 00:00 to 23:59{' (or 24:00)' if info.field_name == 'end' else ''}")
        return v

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if self.armed is None and self.model is None and self.threshold is None:
            raise ValueError("a schedule must set armed, model or threshold (else it does nothing)")
        if not self.name:
            self.name = f"{self.start}-{self.end}"
        return self


class NightConfig(BaseModel):
    """A camera's night profile (model, threshold) for a colour camera that switches to infrared in the
    dark: its picture then turns grey and takes another tone curve, which a model fitted by day reads as
    an anomaly all night. The camera runs this profile while it detects the infrared mode
    (``service/cameras/night.py``): mean chroma under ``grey_below`` for ``hold_s``, and back once it is at
    least ``colour_above`` for ``hold_s``. Two levels and a hold, so a dull scene at dusk does not flap."""
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, max_length=72, description="the model scoring the infrared picture (e.g. "
                              "one fitted on the camera's night footage); default the camera's own")
    threshold: float | None = Field(None, allow_inf_nan=False, description="the threshold at night; default the "
                                    "night model's own (or the camera's, without a model)")
    detect: Literal["ir"] = Field("ir", description="how night is told: `ir` = the picture lost its colour")
    grey_below: float = Field(GREY_CHROMA, ge=0, le=1, description="mean chroma (0-1) under this is grey: infrared "
                              "(a colour street scene reads 0.03-0.15, an infrared picture under 0.005)")
    colour_above: float = Field(0.02, gt=0, le=1, description="mean chroma at least this is colour: day again")
    hold_s: float = Field(10.0, ge=0, le=600, description="seconds the picture must stay grey (or colour) "
                          "before the profile switches")

    @model_validator(mode="after")
    def _check(self) -> NightConfig:
        if self.model is None and self.threshold is None:
            raise ValueError("a night profile must set model or threshold (else it does nothing)")
        if self.grey_below >= self.colour_above:
            raise ValueError(f"grey_below ({self.grey_below}) must be below colour_above ({self.colour_above}): "
                             "the gap between them keeps a dull scene from flapping")
        return self


def check_schedules(schedules: list[ScheduleConfig]) -> list[ScheduleConfig]:
    names = [s.name for s in schedules]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"schedule names must be unique per camera; repeated: {twice}")
    return schedules


def check_timezone(name: str | None) -> str | None:
    """An IANA time zone name the system knows (None: the host's own)."""
    if name is None:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}; expected an IANA name such as Europe/Berlin or "
                         "UTC") from None
    return name


# Checked the same way wherever a camera's time zone and schedules are given (config, POST, PATCH).
TimeZone = Annotated[str | None, AfterValidator(check_timezone)]
Schedules = Annotated[list[ScheduleConfig], AfterValidator(check_schedules)]


def utc_aware(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


class CameraConfig(BaseModel):
    """One camera: an id used in URLs and metric labels, and its source URL (may hold credentials)."""
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=CAMERA_ID, description="letters, digits, '_', '.', '-'; at most 64")
    url: SecretStr = Field(description="rtsp://, rtsps://, http(s):// or file:// source")
    threshold: float | None = Field(None, allow_inf_nan=False, description="anomaly threshold; default: the model's")
    replay_fps: float | None = Field(None, ge=0, description="file sources only: replay rate; default the "
                                     "file's own, 0 = as fast as inference goes (no frame dropped)")
    model: str | None = Field(None, max_length=72, description="bundled or registered model name (a registered "
                              "name runs its current version; name@N pins version N); default the service's model")
    masks: list[list[tuple[float, float]]] = Field(default_factory=list, max_length=32, description=
                                                   "polygons ([[x, y], ...], 0-1 frame coordinates) that never alarm")
    armed: bool = Field(True, description="false: the camera scores, streams and learns but raises no events "
                        "and sends no notifications (outside schedule windows that arm it)")
    armed_since: datetime | None = Field(None, description="when `armed` was last changed at run time (PATCH, "
                                         "MQTT, the live page); set by the service. A schedule window that "
                                         "begins later decides again")
    timezone: TimeZone = Field(None, max_length=64, description="IANA time zone of the schedules; default "
                                 "the host's")
    schedules: Schedules = Field(default_factory=list, max_length=32, description="weekly windows "
                                            "that arm/disarm the camera or select a profile; the first in force "
                                            "wins")
    night: NightConfig | None = Field(None, description="a night profile (model, threshold) run while the "
                                      "camera shows its infrared picture; it wins over a schedule's profile")

    @field_validator("masks")
    @classmethod
    def _check_masks(cls, v: list) -> list:
        return check_polygons(v)

    @field_validator("armed_since")
    @classmethod
    def _utc_since(cls, v: datetime | None) -> datetime | None:
        return utc_aware(v)

    @field_validator("url", mode="before")
    @classmethod
    def _check_url(cls, v: Any) -> Any:
        raw = v.get_secret_value() if isinstance(v, SecretStr) else v
        validate_url(raw, ALLOWED_SCHEMES)
        return v


class CameraPatch(BaseModel):
    """``PATCH /v1/cameras/{id}``: what can change on a running camera; fields left out stay as they are,
    ``threshold: null`` goes back to the model's own."""
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(None, max_length=72)
    threshold: float | None = Field(None, allow_inf_nan=False)
    replay_fps: float | None = Field(None, ge=0)
    masks: list[list[tuple[float, float]]] | None = Field(None, max_length=32)
    armed: bool | None = Field(None, description="arm (true) or disarm (false) now; holds until a schedule "
                               "window that sets `armed` begins")
    timezone: TimeZone = Field(None, max_length=64, description="IANA time zone; null = the host's")
    schedules: Schedules | None = Field(None, max_length=32, description="replaces the list; [] "
                                                   "removes them all")
    night: NightConfig | None = Field(None, description="replaces the night profile; null removes it")

    @field_validator("masks")
    @classmethod
    def _check_masks(cls, v: list | None) -> list | None:
        return v if v is None else check_polygons(v)

    @field_validator("armed", "schedules")
    @classmethod
    def _not_null(cls, v: Any) -> Any:  # only runs on given values: `null` is refused, leaving it out is fine
        if v is None:
            raise ValueError("must not be null")
        return v


class IngestConfig(BaseModel):
    """Camera ingest: timeouts, reconnect backoff, stall detection and queue sizes."""
    model_config = ConfigDict(extra="forbid")
    open_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(5.0, gt=0, description="no packet for this long = stalled")
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(10.0, gt=0)
    backoff_jitter: float = Field(0.25, ge=0, le=1, description="relative random spread of each wait")
    frame_queue: int = Field(8, ge=1, description="decoded frames waiting for inference (drop oldest)")
    publish_queue: int = Field(32, ge=1, le=1000, description="scored frames waiting to be published; when "
                               "publishing falls behind, inference waits and the frame queue drops its oldest")
    stats_save_s: float = Field(30.0, gt=0, description="how often running stats are saved")


class WebSocketConfig(BaseModel):
    """Per-client fan-out of the per-frame messages (service/publish.py)."""
    model_config = ConfigDict(extra="forbid")
    queue: int = Field(16, ge=1, description="messages waiting per WebSocket client (drop oldest)")


class FitConfig(BaseModel):
    """Fit jobs (``POST /v1/models/fit``): a separate process that must leave the cameras real time."""
    model_config = ConfigDict(extra="forbid")
    threads: int = Field(1, ge=1, description="torch threads of the fit process")
    nice: int = Field(10, ge=0, le=19, description="how much lower the fit process's CPU priority is")


class LimitsConfig(BaseModel):
    """Upload limits; larger uploads get 413."""
    model_config = ConfigDict(extra="forbid")
    max_upload_mb: float = Field(100.0, gt=0)
    max_clip_seconds: float = Field(600.0, gt=0)
    max_clip_frames: int = Field(20000, gt=0)
    max_jobs: int = Field(100, ge=1, description="finished clip jobs kept in memory")
    max_queued_jobs: int = Field(8, ge=1, description="clip jobs waiting or running at once; more get 429")
    max_model_mb: float = Field(50.0, gt=0, description="largest model upload (POST /v1/models)")
    max_recordings: int = Field(4, ge=1, description="recordings being written at once; more get 429")
    max_recordings_mb: float = Field(4000.0, gt=0, description="all recordings on disk together; a new "
                                     "recording is refused (507) and a running one stops at this size")
    max_webhooks: int = Field(32, ge=1, description="webhooks added through the API")
    max_fit_jobs: int = Field(20, ge=1, description="finished fit jobs kept (records and work folders)")
    max_calibrations: int = Field(20, ge=1, description="finished calibration jobs kept (all cameras together)")


class AuthConfig(BaseModel):
    """Login sessions and the limit on failed logins (service/auth.py); users live in the state directory."""
    model_config = ConfigDict(extra="forbid")
    session_hours: float = Field(12.0, gt=0, le=24 * 90, description="a login lasts this long (or until a restart)")
    login_failures: int = Field(5, ge=1, le=1000, description="failed logins per client address and per user "
                                "name within login_window_s; more get 429 with Retry-After")
    login_window_s: float = Field(60.0, gt=0, le=86400, description="the window failed logins are counted in")


class CameraEventsConfig(EventConfig):
    """The service's ``events:`` section: the rules that turn flags into events (runtime/events.py) and,
    added here, the evidence each event keeps."""
    model_config = ConfigDict(extra="forbid")
    clips: bool = Field(True, description="write a clip and a snapshot for every event")
    pre_roll_s: float = Field(5.0, ge=0, le=60, description="clip seconds before the event's start")
    post_roll_s: float = Field(5.0, ge=0, le=60, description="clip seconds after the event's end")
    max_clip_s: float = Field(300.0, gt=0, description="a longer event's clip stops here")
    retain_days: float = Field(30.0, gt=0, description="evidence older than this is deleted")
    max_storage_mb: float = Field(1000.0, gt=0, description="evidence per camera; the oldest goes first")


class WebhookConfig(BaseModel):
    """A receiver of event notifications: ``POST url`` with ``X-Amvad-Signature: sha256=<hex HMAC>``."""
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=2000, description="http:// or https:// receiver")
    secret: SecretStr | None = Field(None, description="HMAC-SHA256 key of the signature header")
    cameras: list[str] | None = Field(None, description="only these cameras; default all")
    on: list[Literal["start", "end", "tamper_start", "tamper_end", "scene_change_start", "scene_change_end"]] = Field(
        default_factory=lambda: ["start", "end", "tamper_start", "tamper_end"], min_length=1,
        description="start/end: anomaly events; tamper_*, scene_change_*: camera events (scene changes only when "
                    "asked for: lights going on every evening page nobody)")

    @field_validator("url")
    @classmethod
    def _http_only(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook url must be http:// or https:// with a host")
        return url


class MqttConfig(BaseModel):
    """A broker to publish events, scores and Home Assistant discovery to. Several amvad instances on one
    broker (shards) each need their own ``topic_prefix``: the availability topic is per prefix."""
    model_config = ConfigDict(extra="forbid")
    host: str
    port: int = Field(1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    topic_prefix: str = Field("amvad", pattern=r"^[^#+\s]+$")
    discovery_prefix: str = Field("homeassistant", pattern=r"^[^#+\s]+$")
    score_interval_s: float = Field(1.0, gt=0, description="at most one score message per camera this often")
    keepalive_s: int = Field(30, ge=5)


class NotifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    mqtt: MqttConfig | None = None
    public_url: str | None = Field(None, description="how receivers reach this service (snapshot and clip "
                                   "links); default http://<host>:<port>")


class ServiceSettings(BaseSettings):
    """Everything ``amvad serve`` needs."""
    model_config = SettingsConfigDict(env_prefix="AMVAD_", env_nested_delimiter="__", extra="forbid")
    model: str = Field("ped2", description="bundled model name or path to an exported .onnx")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = Field(None, description="an admin key: with it (or with users) every endpoint but "
                                      "health, metrics and login needs a key or a login")
    tls_cert: Path | None = Field(None, description="PEM certificate (chain): serve HTTPS and WSS (with tls_key)")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert")
    auth: AuthConfig = Field(default_factory=AuthConfig)
    state_dir: Path = Field(Path.home() / ".cache" / "amvad" / "service",
                            description="per-camera running stats and the cameras added through the API")
    forget: float = Field(DEFAULT_FORGET, ge=0, lt=1, description="running-normalisation forgetting per frame")
    media_dirs: list[Path] = Field(default_factory=lambda: [SAMPLES_DIR, Path.cwd()],
                                   description="folders whose files may be cameras (file:// URLs); default the "
                                   "bundled samples and the working directory")
    cameras: list[CameraConfig] = Field(default_factory=list)
    events: CameraEventsConfig = Field(default_factory=CameraEventsConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    websocket: WebSocketConfig = Field(default_factory=WebSocketConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    fit: FitConfig = Field(default_factory=FitConfig)

    @property
    def paths(self) -> StatePaths:
        """Where everything under ``state_dir`` lives."""
        return StatePaths(self.state_dir)

    @model_validator(mode="after")
    def _tls_pair(self) -> ServiceSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both (amvad tls self-signed makes a pair)")
        return self

    @model_validator(mode="after")
    def _cache_in_state(self) -> ServiceSettings:
        """Compiled models are cached under the state directory unless the engine names another place."""
        if self.engine.cache_dir is None:
            self.engine = self.engine.model_copy(update={"cache_dir": self.paths.cache})
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings: PydanticBaseSettingsSource,
                                   env_settings, dotenv_settings, file_secret_settings):
        return init_settings, env_settings


def load_settings(path: str | Path | None = None, **overrides: Any) -> ServiceSettings:
    """YAML file (optional) < environment < explicit overrides (CLI flags that were given)."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        env = ServiceSettings()  # environment only
        merged = _deep_merge(data, env.model_dump(exclude_unset=True))
        merged = _deep_merge(merged, {k: v for k, v in overrides.items() if v is not None})
        return ServiceSettings.model_validate(merged)
    except ValidationError as exc:  # without the offending values: a URL may hold a password
        lines = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False)]
        raise ValueError(redact("invalid service config: " + "; ".join(lines))) from None


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
