"""What an operator can expect from a model on labelled footage, beyond AUC: false alarms per hour of
normal footage, and per anomalous event whether it was caught and how late.

Definitions (both protocols, at one threshold):
- a frame is *flagged* when its score is at or above the threshold;
- an anomalous *event* is a run of consecutive frames labelled anomalous in one clip; it is caught when
  one of its frames is flagged, and its delay runs from its first frame to its first flagged frame;
- a *false alarm* is an alarm that overlaps no anomalous frame, where alarms are made from the scores
  by the service's own rules (:class:`~runtime.events.EventTracker`: minimum duration, cooldown, and
  for the stream protocol its hysteresis, which is in stream-score units and so is 0 on min-max scores);
  they are counted per hour of normal (unlabelled) footage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from amvad.runtime.events import EventConfig, replay_events

RECALL_TARGET = 0.9  # the operating point that catches this share of anomalous frames


@dataclass(frozen=True)
class LabelledScores:
    """One clip's scored frames: ids, scores, labels (1 = anomalous) and timestamps in seconds; ``settled``:
    which scores could start an event (``runtime.events.replay_events``), None = all."""
    frame_ids: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    timestamps: np.ndarray
    settled: np.ndarray | None = None

    @property
    def fps(self) -> float:
        steps = np.diff(self.timestamps) / np.maximum(np.diff(self.frame_ids), 1)
        return 1.0 / float(np.median(steps)) if len(steps) and np.median(steps) > 0 else 1.0


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of every maximal run of True values."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), (np.flatnonzero(edges == -1) - 1).tolist()))


def recall_threshold(clips: list[LabelledScores], recall: float = RECALL_TARGET) -> float | None:
    """The highest threshold that flags at least ``recall`` of the anomalous frames (None without any)."""
    pos = np.sort(np.concatenate([c.scores[c.labels.astype(bool)] for c in clips]))[::-1]
    if not len(pos):
        return None
    return float(pos[max(math.ceil(recall * len(pos)), 1) - 1])


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p90": None}
    return {"median": round(float(np.median(values)), 3), "p90": round(float(np.percentile(values, 90)), 3)}


def operating_point(clips: list[LabelledScores], threshold: float | None, events: EventConfig) -> dict | None:
    """False alarms, caught events and delays at one threshold (None for no threshold)."""
    if threshold is None:
        return None
    false_alarms, normal_s, flagged_pos, total_pos = 0, 0.0, 0, 0
    caught, delays_frames, delays_s, per_event = 0, [], [], []
    for clip in clips:
        labels = clip.labels.astype(bool)
        flagged = clip.scores >= threshold
        fps = clip.fps
        normal_s += float((~labels).sum()) / fps
        flagged_pos += int((flagged & labels).sum())
        total_pos += int(labels.sum())
        alarms = replay_events(clip.scores, clip.timestamps, threshold, events, clip.settled)
        false_alarms += sum(not labels[e.start_frame:e.end_frame + 1].any() for e in alarms)
        for a, b in runs(labels):
            hits = np.flatnonzero(flagged[a:b + 1])
            event = {"start_frame": int(clip.frame_ids[a]), "end_frame": int(clip.frame_ids[b]),
                     "caught": bool(len(hits)), "delay_frames": None, "delay_s": None}
            if len(hits):
                caught += 1
                first = a + int(hits[0])
                event["delay_frames"] = int(clip.frame_ids[first] - clip.frame_ids[a])
                event["delay_s"] = round(float(clip.timestamps[first] - clip.timestamps[a]), 3)
                delays_frames.append(event["delay_frames"]), delays_s.append(event["delay_s"])
            per_event.append(event)
    hours = normal_s / 3600
    return {
        "threshold": round(float(threshold), 6),
        "frame_recall": round(flagged_pos / total_pos, 4) if total_pos else None,
        "false_alarms": false_alarms, "normal_hours": round(hours, 5),
        "false_alarms_per_hour": round(false_alarms / hours, 2) if hours > 0 else None,
        "events_caught": caught, "events_total": len(per_event),
        "detection_delay_frames": _spread(delays_frames), "detection_delay_s": _spread(delays_s),
        "events": per_event,
    }


def alarm_report(clips: list[LabelledScores], own_threshold: float | None, events: EventConfig) -> dict:
    """The two operating points an operator asks about: the model's own threshold, and the one that
    catches ``RECALL_TARGET`` of the anomalous frames."""
    return {"at_threshold": operating_point(clips, own_threshold, events),
            f"at_recall_{round(RECALL_TARGET * 100)}": operating_point(clips, recall_threshold(clips), events)}
