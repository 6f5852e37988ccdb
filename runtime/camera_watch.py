"""Camera events that are not anomalies: tell "the camera changed" from "something happened in the scene".

A :class:`CameraWatch` per stream reads each frame's :class:`~amvad.runtime.types.FrameCondition` (what
``runtime.conditioning`` measured: level, chroma, sharpness, shift and alignment against the model's
fitted view)
against a short running baseline of the camera's own picture, and raises two kinds of
:class:`~amvad.runtime.types.CameraEvent`:

- ``tamper``: the lens is ``covered`` (dark and flat, or dark and blurred: a hand), ``blinded`` (bright
  and flat: a torch, a floodlight, overexposure), the picture ``defocused`` (sharpness collapsed: sprayed,
  fogged, focus turned, or softer than the model was measured to judge, its conditioning's
  ``min_sharpness``; on the fitted view also against the fitted footage, so a camera defocused before
  its baseline was learnt is one too), the picture too ``noisy`` to judge (its sensor noise, after level matching, many
  times the training footage's: a dark scene at high gain), or the camera ``moved`` (the view shifted
  beyond what stabilisation undoes, or no longer looks like the view its model was fitted on). It starts
  once the condition has held for ``tamper_hold_s`` and ends once it has been gone for ``clear_hold_s``.
- ``scene_change``: the brightness jumped at once (``lighting``: lights switched), or a colour picture
  turned grey (``infrared``: the camera switched to its night mode) or back (``daylight``). It ends once
  the level has been steady for ``settle_s`` (at most ``max_settle_s``); the baseline then takes the new
  level. (Contrast alone is not a scene change: an object crossing a dull view changes it as much.)

Frames of a camera that is tampered with, or whose scene change has not settled, say nothing about the
scene: the verdict ``hold`` tells the stream to score none of them (no anomaly, no learning). ``hold``
starts on the second suspicious frame in a row (``hold_after_frames``), long before any event is raised,
so the frames that lead up to an event cannot raise an anomaly event first (that needs the anomaly's
``min_duration_s``).

Which rules run depends on what was measured: without the model's conditioning (models exported before
it) only the level and chroma are, so only ``covered``, ``blinded`` and ``scene_change``; ``moved`` also needs the
camera to show the view its model was fitted on while the watch learns its baseline (alignment at least
``view_alignment``, the shift within what stabilisation undoes): a model used on another camera's view
(the bundled one on your street) cannot tell a turned camera, and does not try; ``noisy`` needs the
training footage's noise in the conditioning (fitted by `amvad train`, `amvad fit` and `amvad export
--condition-on` since it was added).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .conditioning import GREY_CHROMA
from .types import CameraEvent, FrameCondition

TAMPER, SCENE_CHANGE = "tamper", "scene_change"
COVERED, BLINDED, DEFOCUSED, NOISY, MOVED = "covered", "blinded", "defocused", "noisy", "moved"
LIGHTING, INFRARED, DAYLIGHT = "lighting", "infrared", "daylight"
DARK, BRIGHT = 0.2, 0.8  # a flat picture this dark or this bright is covered or blinded whatever the baseline
VIEW_SHARE = 0.9  # share of the learning frames whose shift must be within max_shift for 'moved' to run
MIN_LEVEL = 0.02  # grey levels (0-1) below this are treated as this (a ratio of near-zero levels is noise)


class CameraWatchConfig(BaseModel):
    """When a camera's own picture changes enough to be a camera event rather than a scene's anomaly.
    Defaults from Ped2 frames at the bundled model's 128x192 (see README, "Camera events")."""
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="raise tamper and scene_change events and hold scores meanwhile")
    learn_s: float = Field(2.0, ge=0, le=60, description="seconds of frames the first baseline is the median of")
    level_tau_s: float = Field(2.0, gt=0, description="time constant of the baseline's level: slower changes "
                               "(a cloud, dusk) are followed, faster ones are scene changes")
    view_tau_s: float = Field(120.0, gt=0, description="time constant of the baseline's texture, sharpness and "
                              "alignment (an object crossing the view hardly moves them)")
    flat_contrast: float = Field(0.02, ge=0, le=1, description="a grey std below this, the picture darker than "
                                 "0.2 or brighter than 0.8, is a flat picture whatever the baseline (a covered "
                                 "lens: 0.003-0.005; a hand: 0.016; normal Ped2: 0.18)")
    flat_ratio: float = Field(0.3, gt=0, lt=1, description="or contrast/brightness below this share of the "
                              "baseline's (a dimmed scene keeps its ratio; a covered or blinded lens does not)")
    defocus_ratio: float = Field(0.15, gt=0, lt=1, description="sharpness below this share of the baseline's is "
                                 "defocused (Gaussian blur sigma 3 px at 360x240: 0.25-0.28; sigma 6: 0.05-0.07)")
    noisy_ratio: float = Field(4.0, gt=1, description="sensor noise after level matching this many times the "
                               "training footage's is too noisy to judge (Ped2 at x0.3 light with its gain noise: "
                               "4.1-4.8, where the causal AUC falls to 0.42; x0.5: 1.5-2.1; sigma 8 noise: 1.7-2.3; "
                               "normal: 0.8-1.4); it ends under 0.75 of this")
    view_alignment: float = Field(0.08, ge=0, le=1, description="'moved' runs only on a camera whose alignment "
                                  "with the model's fitted view was at least this while learning (Ped2: 0.14-0.24; "
                                  "another view: 0.03-0.05)")
    moved_ratio: float = Field(0.35, gt=0, lt=1, description="alignment below this share of the baseline's, "
                               "the picture still sharp: the camera shows another view")
    min_alignment: float = Field(0.06, ge=0, le=1, description="a shift is trusted only with at least this "
                                 "phase-correlation peak")
    level_ratio: float = Field(1.25, gt=1, description="brightness this many times the baseline's, up or "
                               "down, at once: a scene change (lights x1.35, an IR switch); flicker of +-8 % is "
                               "not. (Contrast alone is not: an object crossing a dull scene changes it too)")
    hold_after_frames: int = Field(2, ge=1, le=10, description="a condition seen on this many frames in a row "
                                   "holds the scores (one odd frame, e.g. a wrong alignment peak as a bus passes, "
                                   "restarts no window)")
    grey_colour: float = Field(GREY_CHROMA, ge=0, le=1, description="a frame whose mean chroma (runtime.conditioning."
                               "colourfulness) is below this is grey: infrared, or a grey camera")
    colour_ratio: float = Field(0.25, gt=0, lt=1, description="a colour camera (baseline chroma at least twice "
                                "grey_colour) whose chroma falls under this share of it at once switched to "
                                "infrared; the way back is daylight")
    tamper_hold_s: float = Field(2.0, ge=0, le=60, description="a tamper condition held this long starts a "
                                 "tamper event (the issue's target: within 5 s)")
    clear_hold_s: float = Field(2.0, ge=0, le=60, description="and gone this long ends it")
    scene_hold_s: float = Field(0.5, ge=0, le=60, description="a level jump held this long is a scene change "
                                "(shorter: a flash; its frames are held all the same)")
    settle_s: float = Field(2.0, ge=0, le=60, description="a scene change ends once the level stayed within "
                            "settle_tolerance of its median this long")
    settle_tolerance: float = Field(0.1, gt=0, lt=1, description="relative level deviation a settled scene keeps")
    max_settle_s: float = Field(8.0, gt=0, le=300, description="a scene change ends after this at the latest")
    tamper_when_disarmed: bool = Field(True, description="a disarmed camera still reports tamper events (a "
                                       "24-hour zone, as alarm panels do); scene changes follow arming")


@dataclass(frozen=True)
class WatchVerdict:
    """What the watch says of one frame. ``hold``: score nothing of it; ``restart``: start a new temporal
    window with it (a hold began or ended: no window mixes held and scored frames); ``change``: a camera
    event "start"ed or "end"ed on it; ``event``: a copy of the open camera event (or the one that just
    ended); ``rebaseline``: a scene change settled on this frame (the stream re-baselines its scores)."""
    hold: bool = False
    restart: bool = False
    change: str | None = None
    event: CameraEvent | None = None
    rebaseline: bool = False


NOTHING = WatchVerdict()


@dataclass
class Baseline:
    """The camera's own normal: level (fast); texture (contrast/brightness: what a gain leaves alone),
    sharpness and alignment (slow, so an object crossing the view hardly moves them); None until measured."""
    brightness: float
    contrast: float
    texture: float
    sharpness: float | None
    alignment: float | None
    colour: float | None = None


def texture(c: FrameCondition) -> float:
    return c.contrast / max(c.brightness, MIN_LEVEL)


def _ema(old: float | None, new: float | None, a: float) -> float | None:
    if new is None:
        return old
    return new if old is None else old + a * (new - old)


def _ratio(x: float, ref: float) -> float:
    """|log| of x against ref (levels floored at MIN_LEVEL): 0 = equal, ln(1.25) = 25 % apart."""
    return abs(math.log(max(x, MIN_LEVEL) / max(ref, MIN_LEVEL)))


class CameraWatch:
    """Feed :meth:`update` every submitted frame in order; it returns a :class:`WatchVerdict`.

    ``max_shift_px``: the largest shift the conditioner undoes (model pixels; None without the model's
    conditioning): a trusted shift beyond it that was not undone is a moved camera. ``min_sharpness``: the
    model's own limit (its conditioning's ``min_sharpness``): a picture softer than it, or than
    ``defocus_ratio`` if that is higher, is defocused for this model."""

    def __init__(self, config: CameraWatchConfig | None = None, *, max_shift_px: float | None = None,
                 min_sharpness: float | None = None, keep: int = 100) -> None:
        self.cfg = config or CameraWatchConfig()
        self.max_shift_px, self.keep = max_shift_px, keep
        self.defocus_below = max(self.cfg.defocus_ratio, min_sharpness or 0.0)
        self.baseline: Baseline | None = None
        self.view_matched = False
        self.events: list[CameraEvent] = []
        self.open: CameraEvent | None = None
        self._learning: list[FrameCondition] = []
        self._learn_start: float | None = None
        self._last_t: float | None = None
        self._suspect: tuple[str, str, float, int, FrameCondition] | None = None  # type, reason, since, frame
        self._seen = 0  # frames in a row the suspected condition was seen
        self._clear_since: tuple[float, int] | None = None  # an open tamper's condition is gone since (t, frame)
        self._settle: deque[tuple[float, float, float]] = deque()  # (t, brightness, contrast) of a scene change
        self._held = False
        self._count = 0

    # -- what one frame shows ------------------------------------------------------------------------
    def classify(self, c: FrameCondition) -> tuple[str, str] | None:
        """(type, reason) of a camera event this frame alone shows, against the baseline; None if none."""
        cfg, b = self.cfg, self.baseline
        extreme = c.brightness < DARK or c.brightness > BRIGHT
        flat = ((c.contrast < cfg.flat_contrast and extreme)
                or (b is not None and texture(c) < cfg.flat_ratio * b.texture))
        sharp_ratio = (None if c.sharpness is None or b is None or not b.sharpness
                       else c.sharpness / b.sharpness)
        # on the view the model was fitted on, also against that footage: a camera already defocused when its
        # baseline was learnt (added so, or restarted so) is still one. Not on another view, whose picture may
        # be softer than the fitted footage to begin with.
        blurred = ((sharp_ratio is not None and sharp_ratio < self.defocus_below)
                   or (self.view_matched and self._softer_than_fitted(c)))
        darker = b is not None and c.brightness < b.brightness / cfg.level_ratio
        if flat:
            bright = c.brightness > (b.brightness if b is not None else 0.5)
            return TAMPER, BLINDED if bright else COVERED
        if blurred:
            return TAMPER, COVERED if darker else DEFOCUSED
        noisy_limit = cfg.noisy_ratio * (0.75 if self.open is not None and self.open.reason == NOISY else 1.0)
        if c.noise is not None and c.noise >= noisy_limit:
            return TAMPER, NOISY
        if b is None:
            return None
        if self._moved(c, sharp_ratio):
            return TAMPER, MOVED
        mode = self._colour_mode(c)
        if mode is not None:
            return SCENE_CHANGE, mode
        if _ratio(c.brightness, b.brightness) >= math.log(cfg.level_ratio):
            return SCENE_CHANGE, LIGHTING
        return None

    def _softer_than_fitted(self, c: FrameCondition) -> bool:
        """Sharpness under ``defocus_below`` of the fitted footage's (what ``c.sharpness`` is relative to)."""
        return c.sharpness is not None and c.sharpness < self.defocus_below

    def _colour_mode(self, c: FrameCondition) -> str | None:
        """``infrared`` when a colour picture turned grey, ``daylight`` when a grey one turned colour (a grey
        camera never does); None otherwise or when chroma is not measured."""
        b, cfg = self.baseline, self.cfg
        if c.colour is None or b.colour is None:
            return None
        if b.colour >= 2 * cfg.grey_colour and c.colour < cfg.grey_colour and c.colour < cfg.colour_ratio * b.colour:
            return INFRARED
        if b.colour < cfg.grey_colour and c.colour >= 2 * cfg.grey_colour:
            return DAYLIGHT
        return None

    def _moved(self, c: FrameCondition, sharp_ratio: float | None) -> bool:
        if not self.view_matched or c.alignment is None or self.baseline.alignment is None:
            return False
        if (self.max_shift_px is not None and c.shift is not None and not c.compensated
                and c.alignment >= self.cfg.min_alignment and math.hypot(*c.shift) > self.max_shift_px):
            return True
        # a frame the conditioner aligned shows the fitted view, however low its peak (a shaken frame's
        # sub-pixel shift spreads the peak: 0.07 against 0.21 on Ped2 shaken by 3 px)
        still_sharp = sharp_ratio is None or sharp_ratio >= 0.5
        return (still_sharp and not c.compensated
                and c.alignment < self.cfg.moved_ratio * self.baseline.alignment)

    # -- per frame -------------------------------------------------------------------------------------
    def update(self, t: float, frame_id: int, c: FrameCondition | None) -> WatchVerdict:
        if not self.cfg.enabled or c is None:
            return NOTHING
        dt = 0.0 if self._last_t is None else min(max(t - self._last_t, 0.0), 1.0)
        self._last_t = t
        found = self.classify(c)
        learning = self.baseline is None and found is None
        if learning:
            self._learn(t, c)
        if self.open is not None:
            verdict = self._update_open(t, frame_id, c, found)
        elif learning and self._softer_than_fitted(c):
            # while the baseline is learnt: maybe the fitted view defocused, which classify can tell only once
            # the view is known; not scored meanwhile
            verdict = WatchVerdict(hold=True)
        else:
            verdict = self._update_closed(t, frame_id, c, found, dt)
        hold = verdict.hold
        restart, self._held = hold != self._held, hold
        return dataclasses.replace(verdict, restart=restart) if restart else verdict

    def _learn(self, t: float, c: FrameCondition) -> None:
        """The first baseline: the median of the first ``learn_s`` of frames that showed nothing odd."""
        self._learn_start = t if self._learn_start is None else self._learn_start
        self._learning.append(c)
        if t - self._learn_start >= self.cfg.learn_s:
            self.baseline = self._median(self._learning)
            self.view_matched = self._shows_fitted_view(self._learning, self.baseline)
            self._learning = []

    def _shows_fitted_view(self, cs: list[FrameCondition], b: Baseline) -> bool:
        """Whether the camera shows the view its model was fitted on: the alignment peak is high and the
        shift of nearly every frame within what stabilisation undoes. (Against another view the peak can
        still be fair, 0.2 on the synthetic test scenes, but the shift wanders: its frames cannot tell a
        turned camera.)"""
        if b.alignment is None or b.alignment < self.cfg.view_alignment:
            return False
        if self.max_shift_px is None:
            return True
        near = [c.shift is not None and math.hypot(*c.shift) <= self.max_shift_px for c in cs]
        return sum(near) >= VIEW_SHARE * len(near)

    @staticmethod
    def _median(cs: list[FrameCondition]) -> Baseline:
        def med(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return float(np.median(known)) if known else None
        return Baseline(med([c.brightness for c in cs]), med([c.contrast for c in cs]), med([texture(c) for c in cs]),
                        med([c.sharpness for c in cs]), med([c.alignment for c in cs]), med([c.colour for c in cs]))

    def _follow(self, c: FrameCondition, dt: float) -> None:
        """A normal frame moves the baseline (level fast, view slowly)."""
        b = self.baseline
        if b is None or dt <= 0:
            return
        fast, slow = 1 - math.exp(-dt / self.cfg.level_tau_s), 1 - math.exp(-dt / self.cfg.view_tau_s)
        b.brightness, b.contrast = _ema(b.brightness, c.brightness, fast), _ema(b.contrast, c.contrast, fast)
        b.colour = _ema(b.colour, c.colour, fast)
        b.texture = _ema(b.texture, texture(c), slow)
        b.sharpness, b.alignment = _ema(b.sharpness, c.sharpness, slow), _ema(b.alignment, c.alignment, slow)

    def _update_closed(self, t: float, frame_id: int, c: FrameCondition, found: tuple[str, str] | None,
                       dt: float) -> WatchVerdict:
        if found is None:
            self._suspect = None
            self._follow(c, dt)
            return NOTHING
        if self._suspect is None or self._suspect[0] != found[0]:  # the timer runs per type; reason: the latest
            self._suspect, self._seen = (*found, t, frame_id, c), 0
        self._seen += 1
        kind, _, since, since_frame, first = self._suspect
        reason = found[1]
        hold_s = self.cfg.tamper_hold_s if kind == TAMPER else self.cfg.scene_hold_s
        if t - since < hold_s:  # held from its second frame, or still held (a picture held while learning)
            return WatchVerdict(hold=self._seen >= self.cfg.hold_after_frames or self._held)
        self._suspect = None
        return self._start(kind, reason, since, since_frame, first)

    def _start(self, kind: str, reason: str, t: float, frame_id: int, c: FrameCondition) -> WatchVerdict:
        self._count += 1
        self.open = CameraEvent(self._count, kind, reason, t, frame_id, detail=self._detail(c))
        self._seen = 0
        self.events = (self.events + [self.open])[-self.keep:]
        self._clear_since, self._settle = None, deque()
        return WatchVerdict(hold=True, change="start", event=dataclasses.replace(self.open))

    def _detail(self, c: FrameCondition) -> dict:
        """What was measured when the condition began, beside the baseline: why the event was raised."""
        def r(v):
            return None if v is None else round(v, 4)
        b = self.baseline
        out = {"brightness": r(c.brightness), "contrast": r(c.contrast), "sharpness": r(c.sharpness),
               "colour": r(c.colour), "noise": r(c.noise),
               "alignment": r(c.alignment), "shift": None if c.shift is None else [r(v) for v in c.shift]}
        if b is not None:
            out["baseline"] = {"brightness": r(b.brightness), "contrast": r(b.contrast), "texture": r(b.texture),
                               "sharpness": r(b.sharpness), "alignment": r(b.alignment), "colour": r(b.colour)}
        return out

    def _update_open(self, t: float, frame_id: int, c: FrameCondition,
                     found: tuple[str, str] | None) -> WatchVerdict:
        ev = self.open
        if ev.type == SCENE_CHANGE:
            if found is not None and found[0] == TAMPER:  # a tamper during the change: the change ends here
                self._end(t, frame_id)
                self._suspect, self._seen = (*found, t, frame_id, c), 1
                return WatchVerdict(hold=True, change="end", event=dataclasses.replace(self.events[-1]))
            return self._settling(t, frame_id, c)
        if found is not None and found[0] == TAMPER:
            self._seen += 1
            if self._seen >= self.cfg.hold_after_frames:  # seen again (one odd frame does not restart the wait)
                self._clear_since = None
            if self._clear_since is None:
                return WatchVerdict(hold=True, event=dataclasses.replace(ev))
        else:
            self._seen = 0
        self._clear_since = (t, frame_id) if self._clear_since is None else self._clear_since
        if t - self._clear_since[0] < self.cfg.clear_hold_s:
            return WatchVerdict(hold=True, event=dataclasses.replace(ev))
        self._end(*self._clear_since)
        self._take_level(c)  # the picture after a tamper may be lit differently (a cover taken off at night)
        return WatchVerdict(hold=False, change="end", event=dataclasses.replace(self.events[-1]))

    def _settling(self, t: float, frame_id: int, c: FrameCondition) -> WatchVerdict:
        """A scene change ends once its level stayed steady for ``settle_s`` (or after ``max_settle_s``)."""
        cfg, ev, s = self.cfg, self.open, self._settle
        s.append((t, c.brightness, c.contrast))
        med = float(np.median([b for _, b, _ in s]))
        tol = math.log(1 + cfg.settle_tolerance)
        while len(s) > 1 and any(_ratio(b, med) > tol for _, b, _ in s):
            s.popleft()  # keep the steady stretch only
            med = float(np.median([b for _, b, _ in s]))
        steady = t - s[0][0] >= cfg.settle_s
        if not steady and t - ev.start < cfg.max_settle_s:
            return WatchVerdict(hold=True, event=dataclasses.replace(ev))
        self.baseline.brightness = med
        self.baseline.contrast = float(np.median([k for _, _, k in s]))
        self._take_colour(c)
        self._end(t, frame_id)
        return WatchVerdict(hold=False, change="end", event=dataclasses.replace(self.events[-1]), rebaseline=True)

    def _take_level(self, c: FrameCondition) -> None:
        if self.baseline is not None:
            self.baseline.brightness, self.baseline.contrast = c.brightness, c.contrast
            self._take_colour(c)

    def _take_colour(self, c: FrameCondition) -> None:
        if c.colour is not None:
            self.baseline.colour = c.colour

    def _end(self, t: float, frame_id: int) -> None:
        self.open.end, self.open.end_frame = t, frame_id
        self.open, self._clear_since, self._settle = None, None, deque()

    def finish(self, t: float, frame_id: int) -> WatchVerdict:
        """End of the stream: an open camera event ends at the last frame."""
        if self.open is None:
            return NOTHING
        self._end(t, frame_id)
        return WatchVerdict(change="end", event=dataclasses.replace(self.events[-1]))

    def status(self) -> dict:
        """What the watch knows now (the camera's status shows it; read once: the submit thread moves on)."""
        b, ev = self.baseline, self.open
        return {"enabled": self.cfg.enabled, "learning": b is None, "view_matched": self.view_matched,
                "open": None if ev is None else ev.to_dict(),
                "baseline": None if b is None else {k: None if v is None else round(v, 4)
                                                    for k, v in dataclasses.asdict(b).items()}}
