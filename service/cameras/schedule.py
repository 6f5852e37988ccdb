"""What a camera's schedules put in force at one instant: armed or not (and by whom), and the profile
(model, threshold). Pure: the schedules, the camera's time zone and a time in, a record out; the camera
asks again at least once a second (``camera.py``).

Windows are wall-clock times in the camera's zone (``zoneinfo``), so 22:00-06:00 stays 22:00-06:00 across
a DST change (that night is an hour shorter or longer). A boundary inside the hour the clock skips counts
as the same time after the change (02:30 -> 03:30); inside the repeated hour, as its first occurrence.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..config import DAYS, ScheduleConfig

LOCALTIME = Path("/etc/localtime")


def local_zone() -> ZoneInfo:
    """The host's time zone as a ``ZoneInfo`` (``TZ``, else the ``/etc/localtime`` link), else UTC."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    if LOCALTIME.is_symlink():
        target = str(LOCALTIME.resolve())
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    for name in candidates:
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def zone(name: str | None) -> ZoneInfo:
    """The camera's configured zone (validated by the config), or the host's."""
    return local_zone() if name is None else ZoneInfo(name)


def minutes(hhmm: str) -> int:
    hours, mins = hhmm.split(":")
    return int(hours) * 60 + int(mins)


@dataclass(frozen=True)
class Window:
    """One occurrence of a schedule: in force from ``start`` (inclusive) to ``end`` (exclusive)."""
    rule: ScheduleConfig
    start: datetime  # aware, in the camera's zone
    end: datetime

    @property
    def name(self) -> str:
        return self.rule.name

    def covers(self, now: datetime) -> bool:
        return self.start.timestamp() <= now.timestamp() < self.end.timestamp()

    def describe(self) -> str:
        days = "every day" if len(self.rule.days) == 7 else ",".join(self.rule.days)
        return (f"schedule {self.name} ({self.rule.start}-{self.rule.end} {days}) from "
                f"{self.start.isoformat()} to {self.end.isoformat()}")


def occurrence(rule: ScheduleConfig, day: date, tz: tzinfo) -> Window | None:
    """The window of ``rule`` that starts on local ``day``, or None when the rule skips that weekday."""
    if DAYS[day.weekday()] not in rule.days:
        return None
    midnight = datetime(day.year, day.month, day.day)
    start_min, end_min = minutes(rule.start), minutes(rule.end)
    length = end_min - start_min if end_min > start_min else end_min + 24 * 60 - start_min
    # wall-clock arithmetic on naive times, then the zone: a DST night keeps its wall-clock end
    return Window(rule, (midnight + timedelta(minutes=start_min)).replace(tzinfo=tz),
                  (midnight + timedelta(minutes=start_min + length)).replace(tzinfo=tz))


def windows_at(rules: Sequence[ScheduleConfig], tz: tzinfo, now: datetime) -> list[Window]:
    """The windows in force at ``now`` (aware), in the order of ``rules``."""
    today = now.astimezone(tz).date()
    found = []
    for rule in rules:
        for day in (today - timedelta(days=1), today):  # yesterday's may run past midnight
            w = occurrence(rule, day, tz)
            if w is not None and w.covers(now):
                found.append(w)
                break
    return found


def next_start(rules: Sequence[ScheduleConfig], tz: tzinfo, now: datetime) -> Window | None:
    """The first window that sets ``armed`` and starts after ``now`` (within a week), else None."""
    today = now.astimezone(tz).date()
    upcoming = [w for d in range(8) for rule in rules if rule.armed is not None
                if (w := occurrence(rule, today + timedelta(days=d), tz)) is not None
                and w.start.timestamp() > now.timestamp()]
    return min(upcoming, key=lambda w: w.start.timestamp(), default=None)


@dataclass(frozen=True)
class InForce:
    """What a camera does at one instant, and why. ``model``/``threshold`` None with ``profile`` None:
    the camera's own; with a profile window, None threshold = the profile model's own."""
    armed: bool
    armed_by: str                 # "default" (the config), "manual" or "schedule <name>"
    armed_window: Window | None
    profile: Window | None        # the window whose model/threshold is in force
    windows: tuple[Window, ...]   # every window in force
    next_change: Window | None    # for a manual or default state: the next window that will decide

    @property
    def model(self) -> str | None:
        return None if self.profile is None else self.profile.rule.model

    @property
    def threshold(self) -> float | None:
        return None if self.profile is None else self.profile.rule.threshold

    @property
    def profile_by(self) -> str:
        return "camera" if self.profile is None else f"schedule {self.profile.name}"

    def why_armed(self, armed_since: datetime | None) -> str:
        state = "armed" if self.armed else "disarmed"
        if self.armed_window is not None:
            return f"{state} by {self.armed_window.describe()}"
        what = ("the camera's config" if armed_since is None
                else f"a manual change at {armed_since.isoformat()}")
        later = "" if self.next_change is None else f", until {self.next_change.describe()}"
        return f"{state} by {what}{later}"


def in_force(*, armed: bool, armed_since: datetime | None, rules: Sequence[ScheduleConfig], tz: tzinfo,
             now: datetime) -> InForce:
    """The latest change wins: a window that sets ``armed`` decides from its start, unless a manual change
    (``armed_since``) came later; outside such windows the manual (or configured) ``armed`` holds. The
    profile is that of the first window in force that sets a model or a threshold."""
    ws = windows_at(rules, tz, now)
    arming = next((w for w in ws if w.rule.armed is not None), None)
    if arming is not None and (armed_since is None or armed_since.timestamp() < arming.start.timestamp()):
        value, by, window = bool(arming.rule.armed), f"schedule {arming.name}", arming
    else:
        value, by, window = armed, "default" if armed_since is None else "manual", None
    profile = next((w for w in ws if w.rule.model is not None or w.rule.threshold is not None), None)
    upcoming = None if window is not None else next_start(rules, tz, now)
    return InForce(value, by, window, profile, tuple(ws), upcoming)
