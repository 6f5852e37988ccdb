"""Masks from polygons, and the same anomalous object flagged when it moves outside a mask and not when
the mask covers it (the bundled model on the bundled Ped2 sample: a cyclist enters at frame 61)."""

from __future__ import annotations

import numpy as np
import pytest

from amvad.runtime.engine import EngineConfig, InferenceEngine
from amvad.runtime.masks import check_polygons, mask_image
from amvad.runtime.stream import Stream, results_in_order
from amvad.runtime.video import iter_frames, open_source
from amvad.service.config import SAMPLES_DIR


def test_polygons_become_a_mask_at_model_size():
    mask = mask_image([[(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]], 8, 12)
    assert mask.shape == (1, 8, 12) and mask.dtype == np.float32
    assert mask[0, :, :5].max() == 0 and mask[0, :, 7:].min() == 1
    assert mask_image([], 8, 12) is None


@pytest.mark.parametrize("polygon, message", [([(0, 0), (1, 1)], "at least 3 points"),
                                              ([(0, 0), (1.5, 0), (1, 1)], "outside the frame"),
                                              ([(0, 0), (float("nan"), 0), (1, 1)], "outside the frame")])
def test_malformed_polygons_are_refused(polygon, message):
    with pytest.raises(ValueError, match=message):
        check_polygons([polygon])


def box(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


@pytest.fixture(scope="module")
def engine():
    engine = InferenceEngine("ped2", EngineConfig(device="cpu", flow_threads=1, model_threads=1))
    yield engine
    engine.close()


def flagged(engine, masks) -> tuple[int, list]:
    """(frames flagged, heatmaps of the flagged frames) for the sample clip under ``masks``."""
    with open_source(str(SAMPLES_DIR / "ped2_test01.mp4")) as container:
        results = [r for _, r in results_in_order(Stream(engine, masks=masks), iter_frames(container, source_id="s"))]
    hot = [r for r in results if r.anomaly]
    return len(hot), [r.heatmap for r in hot]


def test_the_cyclist_is_flagged_unless_the_mask_covers_his_path(engine):
    # given the clip scored without a mask: the cyclist is flagged
    count, heatmaps = flagged(engine, [])
    assert count > 20
    # where the flagged frames are hot: the cyclist's path, as a box in 0-1 coordinates with a margin
    heat = np.max(heatmaps, axis=0)
    ys, xs = np.nonzero(heat >= 0.25 * heat.max())
    h, w = heat.shape
    path = box(max(0, xs.min() / w - 0.08), max(0, ys.min() / h - 0.08),
               min(1, (xs.max() + 1) / w + 0.08), min(1, (ys.max() + 1) / h + 0.08))
    # when a mask covers that path, nothing is flagged
    assert flagged(engine, [path])[0] == 0
    # and a mask as large elsewhere leaves the cyclist flagged
    x0, x1 = path[0][0], path[1][0]
    width = x1 - x0  # a band as wide as the path, at the top, on the other side of the frame
    elsewhere = box(0.0, 0.0, min(1.0, width), 0.15) if x0 > 0.5 else box(max(0.0, 1 - width), 0.0, 1.0, 0.15)
    assert flagged(engine, [elsewhere])[0] > 20
