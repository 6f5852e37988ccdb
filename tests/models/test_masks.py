"""Every method honours the mask input: masked pixels weigh nothing in the components or the heatmap,
a full mask changes nothing, and the exported graph does the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amvad.models.registry import METHODS, build_model
from tests.support.models import moving_squares


@pytest.mark.parametrize("method", sorted(METHODS))
def test_masked_pixels_weigh_nothing(method, tmp_path):
    torch.manual_seed(0)
    model = build_model(method, clip_len=4, channels=1, height=32, width=48, base_width=4).eval()
    frames, flows = moving_squares(2, torch.Generator().manual_seed(1), anomaly=True)
    full = torch.ones(2, 1, 32, 48)
    half = full.clone()
    half[..., :24] = 0
    with torch.no_grad():
        plain, full_out, half_out = model.score(frames, flows), model.score(frames, flows, full), model.score(frames, flows, half)
        # changing only masked pixels of the target frame's error does not move the components
        changed = frames.clone()
        changed[:, -1, :, :, :8] = 1.0 - changed[:, -1, :, :, :8]
        half_changed = model.score(changed, flows, half)
    for a, b in zip(plain, full_out):
        torch.testing.assert_close(a, b)
    assert float(half_out[1][..., :24].abs().max()) == 0.0 and float(half_out[1][..., 24:].max()) > 0
    assert not torch.allclose(half_out[0], plain[0])
    # pixels deep inside the mask, far from its edge, only reach the components through the network's
    # receptive field, never through the reduction: the heatmap stays zero there
    assert float(half_changed[1][..., :24].abs().max()) == 0.0
    with pytest.raises(ValueError, match="mask must have shape"):
        model.score(frames, flows, half[:, :, :16])


def test_exported_graph_honours_the_mask(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from amvad.training.export import export_onnx
    model = build_model("comemory", clip_len=4, channels=1, height=32, width=48, base_width=4).eval()
    frames, flows = moving_squares(2, torch.Generator().manual_seed(2))
    export_onnx(model, frames[:1], flows[:1], str(tmp_path / "m.onnx"))
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["frames", "flows", "mask"]
    mask = np.ones((2, 1, 32, 48), np.float32)
    mask[..., 10:20, :] = 0
    got = sess.run(None, {"frames": frames.numpy(), "flows": flows.numpy(), "mask": mask})
    with torch.no_grad():
        want = model.score(frames, flows, torch.from_numpy(mask))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=1e-4)
