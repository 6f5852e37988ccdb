"""AMSRC-Net: shapes, losses, rebuild, ONNX parity, input checks, and a tiny anomaly sanity check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from models.amsrc import AMSRCNet
from models.contract import INPUT_NAMES, OUTPUT_NAMES

T, C, H, W = 4, 1, 32, 48
ARGS = dict(clip_len=T, channels=C, height=H, width=W, base_width=4)


def moving_squares(batch: int, gen: torch.Generator, *, anomaly: bool = False,
                   size: int = 8, jump: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Dim squares moving 0-1 px/frame with their exact flow; ``anomaly`` makes the last frame's square
    bright and jump ``jump`` px sideways (and sets the last flow to match)."""
    frames = torch.full((batch, T, C, H, W), 0.1)
    flows = torch.zeros(batch, T - 1, 2, H, W)
    for b in range(batch):
        vx, vy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
        x0 = int(torch.randint(jump + 2, W - size - jump - 2, (1,), generator=gen))
        y0 = int(torch.randint(2, H - size - 2, (1,), generator=gen))
        pos = [(x0 + vx * t, y0 + vy * t) for t in range(T)]
        if anomaly:
            pos[-1] = (pos[-2][0] + jump, pos[-2][1])
        for t, (x, y) in enumerate(pos):
            bright = anomaly and t == T - 1
            frames[b, t, :, y:y + size, x:x + size] = 1.0 if bright else 0.6
            if t < T - 1:
                (nx, ny) = pos[t + 1]
                flows[b, t, 0, y:y + size, x:x + size] = nx - x
                flows[b, t, 1, y:y + size, x:x + size] = ny - y
    return frames, flows


@pytest.fixture
def clip() -> tuple[torch.Tensor, torch.Tensor]:
    return moving_squares(2, torch.Generator().manual_seed(0))


@pytest.fixture
def model() -> AMSRCNet:
    torch.manual_seed(0)
    return AMSRCNet(**ARGS)


def test_forward_and_score_shapes(model, clip):
    out = model(*clip)
    assert out["pred"].shape == (2, C, H, W)
    assert out["fea_frame"].shape == out["fea_flow"].shape == (2, 16, H // 8, W // 8)
    model.eval()
    comps, heat, pred = model.score(*clip)
    assert comps.shape == (2, len(AMSRCNet.component_names)) == (2, 2)
    assert heat.shape == (2, 1, H, W) and bool((heat >= 0).all())
    assert pred.shape == (2, C, H, W) and float(pred.min()) >= 0 and float(pred.max()) <= 1
    assert bool((comps[:, 0] >= 0).all()) and bool((comps[:, 0] <= 1 + 1e-6).all())


def test_losses_finite_and_backprop(model, clip):
    losses = model.losses(model(*clip), *clip)
    assert set(losses) == {"intensity", "gradient", "consistency"}
    for v in losses.values():
        assert v.dim() == 0 and torch.isfinite(v)
    sum(losses.values()).backward()
    for enc in (model.frame_encoder, model.flow_encoder):
        grads = [p.grad for p in enc.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads)


def test_rebuild_from_model_args(model, clip):
    model(*clip)  # move batch-norm statistics away from their defaults
    args = json.loads(json.dumps(model.model_args()))
    clone = type(model)(**args)
    clone.load_state_dict(model.state_dict())
    model.eval(), clone.eval()
    for a, b in zip(model.score(*clip), clone.score(*clip)):
        torch.testing.assert_close(a, b)


def test_bad_shapes_raise(model, clip):
    frames, flows = clip
    with pytest.raises(ValueError):
        model(frames[:, 1:], flows)
    model.eval()
    with pytest.raises(ValueError):
        model.score(frames, flows[:, :, :1])
    with pytest.raises(ValueError):
        model.score(frames[..., :-8], flows)


class _Scorer(nn.Module):
    def __init__(self, m: AMSRCNet) -> None:
        super().__init__()
        self.m = m

    def forward(self, frames, flows):
        return self.m.score(frames, flows)


def test_onnx_export_matches_torch(model, clip, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model(*clip)
    model.eval()
    frames, flows = clip
    path = tmp_path / "amsrc.onnx"
    dyn = {n: {0: "batch"} for n in (*INPUT_NAMES, *OUTPUT_NAMES)}
    # The wrapper must be in eval mode too: export restores the wrapper's mode recursively afterwards.
    torch.onnx.export(_Scorer(model).eval(), (frames[:1], flows[:1]), str(path), opset_version=17,
                      dynamo=False, input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                      dynamic_axes=dyn)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"frames": frames.numpy(), "flows": flows.numpy()})
    assert not model.training
    with torch.no_grad():
        want = model.score(frames, flows)
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape)
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=1e-4)


@pytest.fixture
def single_thread():
    """Tiny convs run faster on one thread, and far faster on a loaded shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_anomaly_scores_higher_after_training(single_thread):
    """60 steps on normal moving squares; a bright square jumping 12 px in frame t must score worse."""
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(2)
    model = AMSRCNet(**ARGS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        frames, flows = moving_squares(8, gen)
        loss = sum(model.losses(model(frames, flows), frames, flows).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test_gen = torch.Generator().manual_seed(3)
    state = test_gen.get_state()
    with torch.no_grad():
        normal, _, _ = model.score(*moving_squares(8, test_gen))
        test_gen.set_state(state)  # same squares, anomalous last frame
        abnormal, _, _ = model.score(*moving_squares(8, test_gen, anomaly=True))
    # The anomaly is only in frame t, which the prediction error (neg_psnr) sees.
    gap = abnormal[:, 1] - normal[:, 1]
    assert bool((gap > 0).all()) and float(gap.mean()) > 1.0
