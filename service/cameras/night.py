"""Day and night by the picture itself: a colour camera that switches to infrared in the dark shows a grey
picture with another tone curve, which a model fitted on its day footage scores as an anomaly all night.
:class:`IrDetector` tells the infrared mode from each frame's mean chroma (``FrameCondition.colour``,
``runtime.conditioning.colourfulness``) so the camera can run its night profile (``config.NightConfig``)
meanwhile.

Why chroma and not the clock: the switch happens when the camera decides (light level, the season, a lamp
nearby), and a picture without colour is what the night model must read. Why two levels and a hold: a
dull scene at dusk sits around the grey level and H.264 adds chroma noise; the picture must stay under
``grey_below`` (or at least ``colour_above``) for ``hold_s`` in a row, so a frame in between restarts the
wait and the mode never flaps. Why "colour seen" first: a grey-only camera (monochrome, or a colour camera
whose chroma is switched off) never shows colour, and is never put on the night profile.

The mode and the "colour seen" fact are kept in ``<state_dir>/cameras/<id>.night`` (written at each
change), so a service restarted at night stays on the night profile and a camera that showed colour
yesterday can switch tonight.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from amvad.runtime.files import write_atomic

from ..config import NightConfig

log = logging.getLogger("amvad.cameras")
MAX_GAP_S = 1.0  # a longer gap between frames (a reconnect, a stall) counts as this much held time


@dataclass(frozen=True)
class NightState:
    """What the detector has concluded: ``night`` (the infrared mode is in force) since ``since`` (Unix
    time of the switch; None before the first one), and whether the camera ever showed colour."""
    night: bool = False
    colour_seen: bool = False
    since: float | None = None


class IrDetector:
    """Feed :meth:`update` each frame's time and chroma in order; it answers whether the mode changed."""

    def __init__(self, cfg: NightConfig, state: NightState | None = None) -> None:
        self.cfg = cfg
        self.state = state or NightState()
        self.colour: float | None = None  # the latest frame's chroma
        self._last_t: float | None = None
        self._held: float | None = None    # seconds the picture has pointed away from the current mode

    @property
    def night(self) -> bool:
        return self.state.night

    def _wants(self, colour: float) -> str | None:
        """Where this frame points: ``night``, ``day`` (also: colour seen for the first time) or nowhere."""
        s, cfg = self.state, self.cfg
        if s.night:
            return "day" if colour >= cfg.colour_above else None
        if not s.colour_seen:
            return "colour" if colour >= cfg.colour_above else None
        return "night" if colour < cfg.grey_below else None

    def update(self, t: float, colour: float | None) -> bool:
        """One frame (``t`` in seconds, any clock that moves forward); True when the night mode switched on
        or off on it. Frames without a chroma measurement are ignored."""
        if colour is None:
            return False
        dt = 0.0 if self._last_t is None else min(max(t - self._last_t, 0.0), MAX_GAP_S)
        self._last_t, self.colour = t, colour
        wants = self._wants(colour)
        if wants is None:
            self._held = None
            return False
        self._held = 0.0 if self._held is None else self._held + dt  # from the first frame that points away
        if self._held < self.cfg.hold_s:
            return False
        self._held = None
        if wants == "colour":
            self.state = NightState(night=False, colour_seen=True, since=self.state.since)
            return False
        self.state = NightState(night=wants == "night", colour_seen=True, since=t)
        return True

    def status(self) -> dict:
        """The mode now and what the picture shows (``GET /v1/cameras/{id}`` → ``night``)."""
        s = self.state
        return {**self.cfg.model_dump(), "mode": "night" if s.night else "day",
                "since": None if s.since is None else iso(s.since), "colour_seen": s.colour_seen,
                "colour": None if self.colour is None else round(self.colour, 4),
                "switching_in_s": None if self._held is None else round(max(self.cfg.hold_s - self._held, 0.0), 1)}

    def why(self) -> str:
        """A sentence for the profile's ``why`` while the night profile runs."""
        since = "" if self.state.since is None else f" since {iso(self.state.since)}"
        return (f"the camera shows its infrared picture{since} (mean chroma under {self.cfg.grey_below:g} for "
                f"{self.cfg.hold_s:g} s): its night profile, until colour (at least {self.cfg.colour_above:g}) "
                f"is back for {self.cfg.hold_s:g} s")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat()


def state_path(stats_dir: Path, camera: str) -> Path:
    """``<id>.night`` beside the running statistics (``<id>.json``): a camera id cannot make one name the
    other, and backups carry the folder."""
    return stats_dir / f"{camera}.night"


def load_state(path: Path, camera: str) -> NightState | None:
    """The saved state, or None (nothing saved, or unreadable: logged, the detector starts afresh)."""
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text())
        return NightState(night=bool(raw["night"]), colour_seen=bool(raw["colour_seen"]),
                          since=None if raw.get("since") is None else float(raw["since"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("camera %s: ignoring unreadable night state %s: %s", camera, path, exc)
        return None


def save_state(path: Path, state: NightState) -> None:
    """Raises OSError when it cannot be written (the caller's error boundary counts it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(asdict(state)).encode())
