"""Session fixtures shared by all test packages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.synthetic import render_clip, write_clip


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> Path:
    """training/frames/01..02 (normal), testing/frames/01..02 with labelled fast-square anomalies."""
    root = tmp_path_factory.mktemp("synth")
    for c in range(2):
        write_clip(root / "training" / "frames" / f"{c + 1:02d}", render_clip(14, speed=1.0, seed=c))
    labels = []
    for c, fast_from in enumerate((8, 5)):
        n = 14
        write_clip(root / "testing" / "frames" / f"{c + 1:02d}",
                   render_clip(n, speed=1.0, seed=10 + c, fast_from=fast_from))
        labels.append((np.arange(n) >= fast_from).astype(np.int64))
    np.save(root / "frame_labels_synth.npy", np.concatenate(labels)[None])
    return root
