"""The pure schedule module: windows across midnight, days of the week, DST, and who decides arming
(the latest of a manual change and a window's start)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from amvad.service.cameras.schedule import in_force, windows_at, zone
from amvad.service.config import ScheduleConfig

BERLIN = ZoneInfo("Europe/Berlin")
UTC = timezone.utc


def rule(start: str, end: str, **kw) -> ScheduleConfig:
    return ScheduleConfig(start=start, end=end, **({"armed": False} | kw))


def at(text: str, tz=BERLIN) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=tz)


def names(rules, now, tz=BERLIN) -> list[str]:
    return [w.name for w in windows_at(rules, tz, now)]


def test_a_night_window_runs_across_midnight():
    night = [rule("22:00", "06:00", name="night")]
    assert names(night, at("2026-06-10 21:59")) == []
    assert names(night, at("2026-06-10 22:00")) == ["night"]      # start inclusive
    assert names(night, at("2026-06-11 00:30")) == ["night"]      # yesterday's window, after midnight
    assert names(night, at("2026-06-11 05:59:59")) == ["night"]
    assert names(night, at("2026-06-11 06:00")) == []             # end exclusive
    w = windows_at(night, BERLIN, at("2026-06-11 03:00"))[0]
    assert (w.start, w.end) == (at("2026-06-10 22:00"), at("2026-06-11 06:00"))


def test_days_are_the_days_a_window_starts_on():
    # 2026-06-12 is a Friday: the Friday night window runs into Saturday morning, none starts on Saturday
    fri = [rule("22:00", "06:00", days=["fri"])]
    assert at("2026-06-12 12:00").strftime("%a") == "Fri"
    assert names(fri, at("2026-06-12 23:00")) == ["22:00-06:00"]
    assert names(fri, at("2026-06-13 05:00")) == ["22:00-06:00"]  # Saturday morning, started Friday
    assert names(fri, at("2026-06-13 23:00")) == []                # Saturday night: no window
    assert names(fri, at("2026-06-12 05:00")) == []                # Friday morning belongs to Thursday
    weekend = [rule("00:00", "24:00", days=["sat", "sun"])]
    assert names(weekend, at("2026-06-13 00:00")) and names(weekend, at("2026-06-14 23:59"))
    assert not names(weekend, at("2026-06-15 00:00")) and not names(weekend, at("2026-06-12 23:59"))
    whole_day = [rule("07:00", "07:00", days=["mon"])]  # start == end: 24 hours
    assert names(whole_day, at("2026-06-16 06:59")) and not names(whole_day, at("2026-06-16 07:00"))


def test_the_window_follows_the_wall_clock_across_dst():
    night = [rule("22:00", "06:00", name="night")]
    # spring forward (Europe/Berlin, 2026-03-29 02:00 -> 03:00): that night lasts 7 hours
    w = windows_at(night, BERLIN, at("2026-03-29 05:00"))[0]
    assert w.end.timestamp() - w.start.timestamp() == 7 * 3600
    assert names(night, datetime(2026, 3, 29, 3, 59, tzinfo=UTC)) == ["night"]   # 05:59 CEST
    assert names(night, datetime(2026, 3, 29, 4, 0, tzinfo=UTC)) == []           # 06:00 CEST
    # fall back (2026-10-25 03:00 -> 02:00): 9 hours, and it still ends at 06:00 local
    w = windows_at(night, BERLIN, at("2026-10-25 05:00"))[0]
    assert w.end.timestamp() - w.start.timestamp() == 9 * 3600
    assert names(night, datetime(2026, 10, 25, 4, 59, tzinfo=UTC)) == ["night"]  # 05:59 CET
    assert names(night, datetime(2026, 10, 25, 5, 0, tzinfo=UTC)) == []          # 06:00 CET
    # a window in the skipped hour starts as the clock shows the same time after the change
    skipped = [rule("02:30", "04:00")]
    assert not names(skipped, datetime(2026, 3, 29, 1, 0, tzinfo=UTC))           # 03:00 CEST
    assert names(skipped, datetime(2026, 3, 29, 1, 30, tzinfo=UTC))              # 03:30 CEST


def test_the_camera_zone_decides_which_local_time_it_is():
    night = [rule("22:00", "06:00")]
    now = datetime(2026, 6, 10, 21, 0, tzinfo=UTC)  # 23:00 in Berlin, 17:00 in New York
    assert names(night, now, BERLIN) and not names(night, now, ZoneInfo("America/New_York"))
    assert zone(None) is not None and zone("UTC") == ZoneInfo("UTC")


def test_the_latest_change_decides_arming():
    night = [rule("22:00", "06:00", name="night", armed=False)]
    ten_pm = at("2026-06-10 22:00")
    # no manual change: the window disarms, outside it the configured state holds
    f = in_force(armed=True, armed_since=None, rules=night, tz=BERLIN, now=ten_pm + timedelta(hours=1))
    assert (f.armed, f.armed_by) == (False, "schedule night") and "from 2026-06-10T22:00:00+02:00" in f.why_armed(None)
    f = in_force(armed=True, armed_since=None, rules=night, tz=BERLIN, now=ten_pm - timedelta(hours=1))
    assert (f.armed, f.armed_by) == (True, "default") and f.next_change.name == "night"
    # a manual change made after the window began wins until the next window begins
    since = ten_pm + timedelta(minutes=30)
    f = in_force(armed=True, armed_since=since, rules=night, tz=BERLIN, now=ten_pm + timedelta(hours=1))
    assert (f.armed, f.armed_by) == (True, "manual") and "manual change" in f.why_armed(since)
    f = in_force(armed=True, armed_since=since, rules=night, tz=BERLIN, now=ten_pm + timedelta(days=1, minutes=1))
    assert (f.armed, f.armed_by) == (False, "schedule night")
    # one made before the window began does not
    f = in_force(armed=True, armed_since=ten_pm - timedelta(minutes=1), rules=night, tz=BERLIN,
                 now=ten_pm + timedelta(minutes=1))
    assert f.armed is False


def test_the_first_window_in_force_with_a_profile_selects_it():
    rules = [rule("08:00", "18:00", name="day", armed=True),
             ScheduleConfig(name="night", start="22:00", end="06:00", model="night-model"),
             ScheduleConfig(name="late", start="23:00", end="01:00", threshold=3.5)]
    f = in_force(armed=True, armed_since=None, rules=rules, tz=BERLIN, now=at("2026-06-10 23:30"))
    assert (f.model, f.threshold, f.profile_by) == ("night-model", None, "schedule night")
    assert [w.name for w in f.windows] == ["night", "late"] and f.armed_by == "default"
    f = in_force(armed=True, armed_since=None, rules=rules, tz=BERLIN, now=at("2026-06-10 12:00"))
    assert (f.model, f.threshold, f.profile_by, f.armed_by) == (None, None, "camera", "schedule day")


@pytest.mark.parametrize("bad", [{"start": "24:00", "end": "06:00"}, {"start": "7:00", "end": "08:00"},
                                 {"start": "07:00", "end": "08:60"}, {"start": "07:00", "end": "08:00",
                                                                      "days": ["monday"]},
                                 {"start": "07:00", "end": "08:00", "days": []}])
def test_bad_schedules_are_refused(bad):
    with pytest.raises(ValueError):
        ScheduleConfig(**({"armed": True} | bad))
