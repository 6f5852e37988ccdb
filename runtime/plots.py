"""The score-curve plot, one for every place that draws one: ``amvad eval`` (a clip with its ground truth)
and the service's clip jobs (an upload with its events). matplotlib is imported when a plot is drawn, and
only its object API is used (no pyplot state), so threads may plot at once."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .files import write_atomic


def score_plot(frame_ids: Sequence[int], scores: Sequence[float | None], threshold: float | None, *,
               title: str, labels: Sequence[bool] | None = None,
               events: Sequence[tuple[int, int | None]] = (), path: str | Path | None = None) -> bytes:
    """PNG bytes of a score curve over frame ids with the threshold line; frames whose score is None
    (warm-up) are left out. ``labels`` (one per frame id, true = anomalous) shades the ground truth in
    red; ``events`` (first, last frame; last None = still open) are shaded orange. With ``path`` the PNG
    is also written there."""
    from matplotlib.figure import Figure
    ids = np.asarray(frame_ids)
    if len(ids) != len(scores) or (labels is not None and len(labels) != len(ids)):
        raise ValueError(f"{len(ids)} frame ids for {len(scores)} scores"
                         + ("" if labels is None else f" and {len(labels)} labels"))
    scored = np.array([s is not None for s in scores], dtype=bool)
    values = np.array([np.nan if s is None else s for s in scores], dtype=np.float64)
    fig = Figure(figsize=(8, 3), dpi=100)
    ax = fig.add_subplot()
    if labels is not None:
        ax.fill_between(ids, 0, 1, where=np.asarray(labels, dtype=bool), transform=ax.get_xaxis_transform(),
                        color="tab:red", alpha=0.18, step="mid", label="ground truth anomalous")
    last = int(ids[-1]) if len(ids) else 0
    for n, (first, end) in enumerate(events):
        ax.axvspan(first, last if end is None else end, color="orange", alpha=0.25, label="event" if n == 0 else None)
    ax.plot(ids[scored], values[scored], color="tab:blue", lw=1.3, label="score")
    if threshold is not None:
        ax.axhline(threshold, color="tab:gray", ls="--", lw=1, label="threshold")
    ax.set_xlabel("frame")
    ax.set_ylabel("anomaly score")
    ax.set_title(title.replace("$", r"\$"))  # a file name is text, never matplotlib math
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    png = buf.getvalue()
    if path is not None:
        write_atomic(path, png)
    return png
