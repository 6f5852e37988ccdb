"""AMMC-Net and MemPool: shapes, top-K retrieval, commit loss, the two training stages, the optional
frame-flow loss, rebuild with the stage buffer, ONNX parity and input checks."""

from __future__ import annotations

import pytest
import torch

from amvad.models.ammc import COMMIT_PATCH, AMMCNet, MemPool, commit_map
from amvad.models.contract import patch_max
from tests.support.models import (
    assert_bad_shapes_raise,
    assert_has_grads,
    assert_losses_backprop,
    assert_onnx_matches_torch,
    assert_rebuild_scores_equal,
    assert_score_outputs,
)

T, C, H, W = 4, 1, 32, 48
ARGS = dict(clip_len=T, channels=C, height=H, width=W, base_width=4, mem_items=8, top_k=2)
BASE_LOSSES = {"intensity", "gradient", "flow_pred", "commit"}


@pytest.fixture
def model() -> AMMCNet:
    torch.manual_seed(0)
    return AMMCNet(**ARGS)


def _no_grads(*modules: torch.nn.Module) -> bool:
    return all(p.grad is None for m in modules for p in m.parameters())


def test_forward_and_score_shapes(model, clip):
    out = model(*clip)
    assert out["prediction"].shape == out["target"].shape == (2, C, H, W)
    assert out["pred_flow"].shape == out["target_flow"].shape == (2, 2, H, W)
    for key in ("z_app", "e_app", "z_mot", "e_mot"):
        assert out[key].shape == (2, 16, H // 8, W // 8)
    comps = assert_score_outputs(model, *clip)
    assert comps.shape == (2, len(AMMCNet.component_names)) == (2, 3)
    with torch.no_grad():
        out = model(*clip)
    commit = commit_map(out["z_app"], out["e_app"]) + commit_map(out["z_mot"], out["e_mot"])
    torch.testing.assert_close(comps[:, 1], patch_max(commit, COMMIT_PATCH))
    assert bool((comps >= 0).all())


def test_commit_error_is_that_of_the_worst_patch():
    """One cell far from its memory feature: the mean over the map would dilute it, the patch keeps it."""
    z = torch.zeros(2, 3, 4, 4)
    e = torch.zeros(2, 3, 4, 4)
    e[1, :, 0, 0] = 2.0
    cells = commit_map(z, e)
    torch.testing.assert_close(cells[:, 0, 0, 0], torch.tensor([0.0, 4.0]))
    torch.testing.assert_close(patch_max(cells, COMMIT_PATCH), torch.tensor([0.0, 1.0]))
    mask = torch.ones(2, 1, 32, 32)
    mask[:, :, :8, :8] = 0  # masking that cell's pixels removes it
    assert float(commit_map(z, e, mask).max()) == 0.0


def test_flow_is_decoded_from_memory_features_only(model, clip):
    """The flow decoder sees the aggregation of the memory-guided (and, in stage 2, transferred)
    motion features, never the encoder feature or skips, which would let it copy any motion."""
    seen = {}
    model.mot_agg.register_forward_hook(lambda m, args, out: seen.update(agg_in=args[0]))
    model.mot_mem.register_forward_hook(lambda m, args, out: seen.update(e_mot=out))
    model.mot_dec.register_forward_hook(lambda m, args, out: seen.update(dec_args=args))
    model.eval()
    for stage in (1, 2):
        model.set_stage(stage)
        model(*clip)
        d = seen["e_mot"].shape[1]
        assert seen["agg_in"].shape[1] == 2 * d
        assert torch.equal(seen["agg_in"][:, d:], seen["e_mot"])
        assert len(seen["dec_args"]) == 1


def _set_fuse_to_slot(pool: MemPool, slot: int) -> None:
    """Make the 1x1 fuse conv output exactly the item retrieved in rank ``slot`` (0 = nearest)."""
    d = pool.items.shape[1]
    with torch.no_grad():
        pool.fuse.weight.zero_()
        pool.fuse.bias.zero_()
        pool.fuse.weight[:, slot * d:(slot + 1) * d, 0, 0] = torch.eye(d)


def test_mempool_retrieves_top_k_nearest_in_order():
    torch.manual_seed(0)
    d, n, k = 3, 8, 3
    pool = MemPool(d, n, k)
    z = torch.randn(2, d, 4, 5)
    q = z.permute(0, 2, 3, 1).reshape(-1, d)
    order = ((q[:, None] - pool.items[None]) ** 2).sum(-1).argsort(1)  # brute force, nearest first
    for slot in range(k):
        _set_fuse_to_slot(pool, slot)
        with torch.no_grad():
            got = pool(z).permute(0, 2, 3, 1).reshape(-1, d)
        torch.testing.assert_close(got, pool.items[order[:, slot]].detach())


def test_mempool_known_items_average():
    """Items on a line; the fuse averages the two picked items, so the answer is known by hand."""
    pool = MemPool(2, 4, 2)
    with torch.no_grad():
        pool.items.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [9.0, 1.0]]))
        pool.fuse.weight.copy_(torch.cat([torch.eye(2), torch.eye(2)], 1)[..., None, None] / 2)
        pool.fuse.bias.zero_()
        # Queries (0.9, 0) -> items 1, 0; (4, 0) -> items 2, 1; (8, 1) -> items 3, 2.
        z = torch.tensor([[0.9, 4.0, 8.0], [0.0, 0.0, 1.0]]).reshape(1, 2, 1, 3)
        got = pool(z)[0, :, 0].t()
    want = torch.tensor([[0.5, 0.0], [3.0, 0.0], [7.0, 0.5]])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("top_k", [0, 9])
def test_mempool_rejects_bad_top_k(top_k):
    with pytest.raises(ValueError):
        MemPool(4, 8, top_k)


def test_commit_loss_reaches_encoders_and_memory(model, clip):
    out = model(*clip)
    model.losses(out, *clip)["commit"].backward()
    assert_has_grads(model.app_enc, model.mot_enc)
    for pool in (model.app_mem, model.mot_mem):
        g = pool.items.grad
        assert g is not None and bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0
    # The commit loss alone never reaches the decoders.
    assert _no_grads(model.app_dec, model.mot_dec)


def test_stage_one_skips_transfer(model, clip):
    assert int(model.stage) == 1
    losses = model.losses(model(*clip), *clip)
    assert_losses_backprop(losses, BASE_LOSSES, model.app_enc, model.mot_enc, model.app_dec,
                           model.mot_dec)
    assert _no_grads(model.app_to_mot, model.mot_to_app)


def test_stage_two_trains_transfer(model, clip):
    model.set_stage(2)
    assert int(model.stage) == 2
    losses = model.losses(model(*clip), *clip)
    assert_losses_backprop(losses, BASE_LOSSES, model.app_to_mot, model.mot_to_app)


def _transfer_calls(model: AMMCNet, run) -> int:
    """How many times the two AMFT nets run during ``run()``."""
    calls = []
    hooks = [net.register_forward_hook(lambda *_: calls.append(1))
             for net in (model.app_to_mot, model.mot_to_app)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()
    return len(calls)


def test_transfer_runs_only_in_stage_two(model, clip):
    assert _transfer_calls(model, lambda: model(*clip)) == 0
    model.set_stage(2)
    assert _transfer_calls(model, lambda: model(*clip)) == 2
    model.eval()
    assert _transfer_calls(model, lambda: model.score(*clip)) == 2


@pytest.mark.parametrize("stage", [0, 3])
def test_set_stage_rejects_other_values(model, stage):
    with pytest.raises(ValueError):
        model.set_stage(stage)
    assert int(model.stage) == 1


def test_frame_flow_loss_only_in_stage_two(clip):
    torch.manual_seed(0)
    model = AMMCNet(**ARGS, w_frame_flow=1.0)
    assert set(model.losses(model(*clip), *clip)) == BASE_LOSSES
    model.set_stage(2)
    losses = model.losses(model(*clip), *clip)
    assert set(losses) == BASE_LOSSES | {"frame_flow"}
    ff = losses["frame_flow"]
    assert ff.dim() == 0 and torch.isfinite(ff)
    ff.backward()
    assert_has_grads(model.app_dec)
    assert _no_grads(model.mot_dec)  # the frame-flow loss looks at the predicted frame only


def test_no_frame_flow_loss_without_weight(model, clip):
    model.set_stage(2)
    assert set(model.losses(model(*clip), *clip)) == BASE_LOSSES


def test_stage_saved_and_rebuilt(warm_model, clip):
    warm_model.set_stage(2)
    assert int(warm_model.state_dict()["stage"]) == 2
    # The clone starts in stage 1 with other random weights; the state dict brings stage 2 back.
    clone = assert_rebuild_scores_equal(warm_model, *clip, reseed=123)
    assert int(clone.stage) == 2
    assert _transfer_calls(clone, lambda: clone.score(*clip)) == 2


def test_bad_shapes_raise(model, clip):
    assert_bad_shapes_raise(model, *clip)


@pytest.mark.parametrize("stage", [1, 2])
def test_onnx_export_matches_torch(warm_model, clip, tmp_path, stage):
    warm_model.set_stage(stage)
    assert_onnx_matches_torch(warm_model, *clip, tmp_path / f"ammc_stage{stage}.onnx")
