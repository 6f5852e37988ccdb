"""CoMemoryNet and Memory: shapes, losses, memory update rules, rebuild, ONNX parity, input checks,
and a tiny anomaly sanity check."""

from __future__ import annotations

import pytest
import torch

from amvad.models.comemory import CoMemoryNet
from amvad.models.memory import Memory
from tests.support.models import (
    assert_bad_shapes_raise,
    assert_losses_backprop,
    assert_onnx_matches_torch,
    assert_rebuild_scores_equal,
    assert_score_outputs,
    train_and_score_squares,
)

T, C, H, W = 4, 1, 32, 48
ARGS = dict(clip_len=T, channels=C, height=H, width=W, base_width=4, num_items=8)


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
    comps = assert_score_outputs(model, *clip)
    assert comps.shape == (2, 2)
    assert bool((comps >= 0).all())


def test_losses_finite_and_backprop(model, clip):
    losses = model.losses(model(*clip), *clip)
    assert_losses_backprop(losses, {"intensity", "gradient", "flow", "compactness", "separateness"},
                           model.app_encoder, model.mot_encoder)
    model.eval()
    assert set(model.losses(model(*clip), *clip)) == {"intensity", "gradient", "flow"}


def test_flow_is_decoded_from_the_memory_read_only(model, clip):
    """The flow decoder's whole input is the motion memory's read: no query, no skips, which would
    let it copy any input motion past the memory."""
    seen = {}
    model.mot_memory.register_forward_hook(lambda m, args, out: seen.update(read=out["read"]))
    model.flow_decoder.register_forward_hook(lambda m, args, out: seen.update(args=args))
    model.eval()
    model(*clip)
    assert len(seen["args"]) == 1
    assert torch.equal(seen["args"][0], seen["read"])


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


def test_rebuild_from_model_args(warm_model, clip):
    # memories and batch-norm statistics moved by a training forward; the clone gets a
    # different random memory init, overwritten by the state dict.
    assert_rebuild_scores_equal(warm_model, *clip, reseed=123)


def test_bad_shapes_raise(model, clip):
    assert_bad_shapes_raise(model, *clip)


def test_onnx_export_matches_torch(warm_model, clip, tmp_path):
    assert_onnx_matches_torch(warm_model, *clip, tmp_path / "comemory.onnx")


def test_anomaly_scores_higher_after_training(single_thread):
    """40 steps on normal moving squares; a bright square jumping 12 px in frame t (and in the last
    flow) must get higher frame and flow components."""
    torch.manual_seed(1)
    normal, abnormal = train_and_score_squares(CoMemoryNet(**ARGS), 40)
    assert bool((abnormal > normal).all())
