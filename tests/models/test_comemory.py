"""CoMemoryNet and Memory: shapes, losses, memory update rules, rebuild, ONNX parity, input checks,
and a tiny anomaly sanity check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from models.comemory import CoMemoryNet
from models.contract import INPUT_NAMES, OUTPUT_NAMES
from models.memory import Memory

T, C, H, W = 4, 1, 32, 48
ARGS = dict(clip_len=T, channels=C, height=H, width=W, base_width=4, num_items=8)


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
def model() -> CoMemoryNet:
    torch.manual_seed(0)
    return CoMemoryNet(**ARGS)


def test_memory_read_and_losses():
    torch.manual_seed(0)
    mem = Memory(5, 6)
    torch.testing.assert_close(mem.items.norm(dim=1), torch.ones(5))
    query = torch.randn(2, 6, 3, 4, requires_grad=True)
    mem.eval()
    out = mem(query)
    assert out["output"].shape == (2, 12, 3, 4) and set(out) == {"output", "query", "read"}
    q = out["query"].permute(0, 2, 3, 1).reshape(-1, 6)
    want = torch.softmax(q @ mem.items.t(), 1) @ mem.items
    torch.testing.assert_close(out["read"].permute(0, 2, 3, 1).reshape(-1, 6), want)
    mem.train()
    out = mem(query)
    assert out["compactness"].dim() == 0 and out["separateness"].dim() == 0
    (out["compactness"] + out["separateness"] + out["output"].sum()).backward()
    assert query.grad is not None and torch.isfinite(query.grad).all()


def test_memory_update_rule():
    """Two queries nearest to item 0, none to item 1: item 0 moves towards them, item 1 stays."""
    mem = Memory(2, 2)
    mem.items.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    query = torch.tensor([[0.9, 0.1], [0.8, -0.3]]).t().reshape(1, 2, 1, 2)
    mem.train()
    mem(query)
    qn = torch.nn.functional.normalize(torch.tensor([[0.9, 0.1], [0.8, -0.3]]), dim=1)
    v = torch.softmax(qn @ torch.eye(2), 0)[:, 0]
    expect = torch.nn.functional.normalize(torch.tensor([1.0, 0.0]) + (v / v.max()) @ qn, dim=0)
    torch.testing.assert_close(mem.items[0], expect)
    torch.testing.assert_close(mem.items[1], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(mem.items.norm(dim=1), torch.ones(2))


def test_forward_and_score_shapes(model, clip):
    out = model(*clip)
    assert out["pred"].shape == (2, C, H, W) and out["flow_pred"].shape == (2, 2, H, W)
    model.eval()
    comps, heat, pred = model.score(*clip)
    assert comps.shape == (2, len(CoMemoryNet.component_names)) == (2, 2)
    assert bool((comps >= 0).all())
    assert heat.shape == (2, 1, H, W) and bool((heat >= 0).all())
    assert pred.shape == (2, C, H, W) and float(pred.min()) >= 0 and float(pred.max()) <= 1


def test_losses_finite_and_backprop(model, clip):
    losses = model.losses(model(*clip), *clip)
    assert set(losses) == {"intensity", "gradient", "flow", "compactness", "separateness"}
    for v in losses.values():
        assert v.dim() == 0 and torch.isfinite(v)
    sum(losses.values()).backward()
    for enc in (model.app_encoder, model.mot_encoder):
        grads = [p.grad for p in enc.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads)
    model.eval()
    assert set(model.losses(model(*clip), *clip)) == {"intensity", "gradient", "flow"}


def test_memory_updates_only_in_training(model, clip):
    before = [m.items.clone() for m in (model.app_memory, model.mot_memory)]
    model.train()
    model(*clip)
    after = [m.items.clone() for m in (model.app_memory, model.mot_memory)]
    assert all(not torch.equal(b, a) for b, a in zip(before, after))
    model.eval()
    model(*clip)
    model.score(*clip)
    assert all(torch.equal(a, m.items) for a, m in zip(after, (model.app_memory, model.mot_memory)))
    assert "app_memory.items" in model.state_dict() and "mot_memory.items" in model.state_dict()


def test_rebuild_from_model_args(model, clip):
    model(*clip)  # update memories and batch-norm statistics away from their initial values
    args = json.loads(json.dumps(model.model_args()))
    torch.manual_seed(123)  # a different random memory init, overwritten by the state dict
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
        model.score(frames[:1], flows)


class _Scorer(nn.Module):
    def __init__(self, m: CoMemoryNet) -> None:
        super().__init__()
        self.m = m

    def forward(self, frames, flows):
        return self.m.score(frames, flows)


def test_onnx_export_matches_torch(model, clip, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model(*clip)
    model.eval()
    frames, flows = clip
    path = tmp_path / "comemory.onnx"
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
    """40 steps on normal moving squares; a bright square jumping 12 px in frame t (and in the last
    flow) must get higher frame and flow components."""
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(2)
    model = CoMemoryNet(**ARGS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
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
        test_gen.set_state(state)  # same squares, anomalous last frame and flow
        abnormal, _, _ = model.score(*moving_squares(8, test_gen, anomaly=True))
    assert bool((abnormal > normal).all())
