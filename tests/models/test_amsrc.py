"""AMSRC-Net: shapes, losses, rebuild, ONNX parity, input checks, and a tiny anomaly sanity check."""

from __future__ import annotations

import pytest
import torch

from amvad.models.amsrc import AMSRCNet, contrast, inconsistency_map, masked_quantile, speed
from amvad.models.contract import patch_max
from amvad.models.flow.tvl1 import gaussian_blur
from tests.support.models import (
    assert_bad_shapes_raise,
    assert_has_grads,
    assert_losses_backprop,
    assert_onnx_matches_torch,
    assert_rebuild_scores_equal,
    assert_score_outputs,
    train_and_score_squares,
)

T, C, H, W = 4, 1, 32, 48
ARGS = dict(clip_len=T, channels=C, height=H, width=W, base_width=4)


@pytest.fixture
def model() -> AMSRCNet:
    torch.manual_seed(0)
    return AMSRCNet(**ARGS)


def test_forward_and_score_shapes(model, clip):
    out = model(*clip)
    assert out["pred"].shape == (2, C, H, W)
    assert out["fea_frame"].shape == out["fea_flow"].shape == (2, 16, H // 8, W // 8)
    assert out["flow_rec"].shape == (2, 2, H, W) and out["app_speed"].shape == (2, 1, H, W)
    assert out["pred_features"].shape == (2, C, H, W)
    comps = assert_score_outputs(model, *clip)
    assert comps.shape == (2, 3)
    assert bool((comps[:, 0] >= 0).all()) and bool((comps[:, 0] <= 1 + 1e-6).all())


def test_losses_finite_and_backprop(model, clip):
    losses = model.losses(model(*clip), *clip)
    assert_losses_backprop(losses, {"intensity", "gradient", "consistency", "flow", "app_speed",
                                    "feature_intensity", "feature_gradient"},
                           model.frame_encoder, model.flow_encoder, model.flow_decoder, model.speed_decoder,
                           model.feature_decoder, model.decoder)


def test_features_learn_through_the_skipless_decoder_and_the_predictor_only_renders(model, clip):
    """The scoring predictor's skips would carry the appearance around the frame feature, so its loss must not
    reach the encoders; the skip-less decoder's loss (frame t from the fused feature alone) reaches both."""
    def grads(names):
        model.zero_grad()
        losses = model.losses(model(*clip), *clip)
        sum(losses[n] for n in names).backward()
        return {m: any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in getattr(model, m).parameters())
                for m in ("frame_encoder", "flow_encoder", "decoder", "feature_decoder")}
    assert grads(["intensity", "gradient"]) == dict(frame_encoder=False, flow_encoder=False, decoder=True,
                                                    feature_decoder=False)
    assert grads(["feature_intensity", "feature_gradient"]) == dict(frame_encoder=True, flow_encoder=True,
                                                                    decoder=False, feature_decoder=True)
    model.eval()
    out = model(*clip)
    assert "pred_features" not in out and not {"feature_intensity", "feature_gradient"} & set(model.losses(out, *clip))


def test_motion_feature_is_decoded_to_flow_in_training_and_appearance_to_speed_when_scoring(model, clip):
    """Training decodes the last past flow from the flow stream's feature (keeping it informative); the
    speed decoder reads the frame stream's feature alone: the speed the appearance implies, whose error
    against the real speed (direction left out) is the ``speed_patch`` component."""
    seen = {}
    model.speed_decoder.register_forward_hook(lambda m, args, o: seen.update(speed_in=args[0]))
    model.flow_decoder.register_forward_hook(lambda m, args, o: seen.update(flow_in=args[0]))
    model.eval()
    out = model(*clip)
    assert "flow_rec" not in out and "flow" not in model.losses(out, *clip) and "flow_in" not in seen
    assert torch.equal(seen["speed_in"], out["fea_frame"])
    comps, _, _ = model.score(*clip)
    last_flow = clip[1][:, -2] / model.flow_scale
    err = (out["app_speed"] - speed(last_flow)) ** 2
    torch.testing.assert_close(comps[:, 2], patch_max(err, 16))
    # the direction does not count: the reversed flow has the same speed
    torch.testing.assert_close(speed(-last_flow), speed(last_flow))
    model.train()
    out = model(*clip)
    assert torch.equal(seen["flow_in"], out["fea_flow"])


def test_rebuild_from_model_args(warm_model, clip):
    # warm_model moved the batch-norm statistics away from their defaults.
    assert_rebuild_scores_equal(warm_model, *clip)


def test_bad_shapes_raise(model, clip):
    assert_bad_shapes_raise(model, *clip)


def test_onnx_export_matches_torch(warm_model, clip, tmp_path):
    assert_onnx_matches_torch(warm_model, *clip, tmp_path / "amsrc.onnx")


def test_anomaly_scores_higher_after_training(single_thread):
    """60 steps on normal moving squares; a bright square jumping 12 px in frame t must score worse."""
    torch.manual_seed(1)
    normal, abnormal = train_and_score_squares(AMSRCNet(**ARGS), 60)
    # The anomaly is in frame t and flow t-1 -> t: the worst patch of the prediction error sees it in every
    # sample; neither stream sees anything after frame t-1, so their consistency cannot change.
    assert bool((abnormal[:, 1] > 2 * normal[:, 1]).all())
    torch.testing.assert_close(abnormal[:, 0], normal[:, 0])


def test_streams_see_one_frame_and_the_past_flows_only(model, clip):
    """Appearance is frame t-1 alone (several frames would show the motion too); motion is the flows up to
    frame t-1; neither sees frame t or flow t-1 -> t, which the decoder must predict."""
    frames, flows = clip
    model.eval()
    base = model(frames, flows)
    changed_frames = frames.clone()
    changed_frames[:, :-2] = torch.rand_like(changed_frames[:, :-2])  # frames before t-1
    changed_frames[:, -1] = torch.rand_like(changed_frames[:, -1])    # frame t
    changed_flows = flows.clone()
    changed_flows[:, -1] = torch.randn_like(changed_flows[:, -1])     # flow t-1 -> t
    out = model(changed_frames, changed_flows)
    torch.testing.assert_close(out["fea_frame"], base["fea_frame"])
    torch.testing.assert_close(out["fea_flow"], base["fea_flow"])
    torch.testing.assert_close(out["pred"], base["pred"])


def test_soft_view_teaches_the_frame_stream_to_read_a_blurred_frame_as_the_sharp_one(clip):
    """``lambda_soft``: the frame stream's feature direction and implied speed of frame t-1 blurred are
    pulled to those of the sharp frame, whose own reading is not moved (detached); nothing else changes."""
    torch.manual_seed(0)
    soft = AMSRCNet(**ARGS, lambda_soft=1.0)
    plain = AMSRCNet(**ARGS)
    plain.load_state_dict(soft.state_dict())  # no new weights: the exported graph stays the same
    frames, flows = clip
    losses = soft.losses(soft(frames, flows), frames, flows)
    assert "soft" not in plain.losses(plain(frames, flows), frames, flows) and float(losses["soft"]) > 0
    soft.zero_grad()
    losses["soft"].backward()
    assert_has_grads(soft.frame_encoder, soft.speed_decoder)
    assert all(p.grad is None for m in (soft.flow_encoder, soft.decoder, soft.feature_decoder)
               for p in m.parameters())
    # a flat frame is its own blur: nothing to learn
    flat = torch.full_like(frames, 0.4)
    assert float(soft.losses(soft(flat, flows), flat, flows)["soft"]) < 1e-5
    plain.load_state_dict(soft.state_dict())  # the training-mode passes above moved the batch-norm statistics
    soft.eval()
    plain.eval()
    out = soft(frames, flows)
    assert "fea_soft" not in out and "soft" not in soft.losses(out, frames, flows)
    torch.testing.assert_close(soft.score(frames, flows)[0], plain.score(frames, flows)[0])


def test_a_soft_view_that_reaches_only_the_bottleneck_leaves_the_skip_stages_alone(clip):
    """``soft_reach="bottleneck"``: the stages whose outputs are the predictor's skips get no gradient from
    the soft view, so they keep the sharp detail the frame prediction needs."""
    torch.manual_seed(0)
    model = AMSRCNet(**ARGS, lambda_soft=1.0, soft_reach="bottleneck")
    frames, flows = clip
    soft = model.losses(model(frames, flows), frames, flows)["soft"]
    model.zero_grad()
    soft.backward()
    assert float(soft) > 0
    assert_has_grads(model.frame_encoder.bottleneck, model.speed_decoder)
    assert all(p.grad is None for p in model.frame_encoder.stages.parameters())


def test_a_soft_view_that_matches_the_speed_alone_leaves_the_feature_direction_out(clip):
    """``soft_match="speed"``: the soft term is the implied-speed difference alone; the feature direction,
    which the cosine component reads, is not pulled towards the blurred frame's."""
    torch.manual_seed(0)
    both = AMSRCNet(**ARGS, lambda_soft=2.0)
    speed_only = AMSRCNet(**ARGS, lambda_soft=2.0, soft_match="speed")
    frames, flows = clip
    out = both(frames, flows)  # one draw of the blur for both
    speed_term = (out["app_speed_soft"] - out["app_speed"]).abs().mean()
    direction_term = inconsistency_map(out["fea_soft"], out["fea_frame"]).mean()
    assert float(direction_term) > 0
    torch.testing.assert_close(speed_only.losses(out, frames, flows)["soft"], 2.0 * speed_term)
    torch.testing.assert_close(both.losses(out, frames, flows)["soft"], 2.0 * (speed_term + direction_term))


def test_a_band_limited_frame_stream_reads_a_softened_frame_almost_as_the_sharp_one(clip, tmp_path):
    """``appearance_sigma``: the frame stream and the predicted frame see the picture through a fixed
    Gaussian, so a softer picture (here σ 1 px) moves what they read much less than it moves a model
    without it (same weights); the flows stay as measured, and the graph exports as it scores."""
    torch.manual_seed(0)
    banded = AMSRCNet(**ARGS, appearance_sigma=1.5).eval()
    plain = AMSRCNet(**ARGS).eval()
    plain.load_state_dict(banded.state_dict())  # no new weights
    frames, flows = clip
    frames = (frames + 0.2 * torch.rand(frames.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    soft = gaussian_blur(frames.flatten(0, 1), 1.0).view_as(frames)

    def moved(model: AMSRCNet, key: str) -> float:
        a, b = model.views(frames, flows)[key], model.views(soft, flows)[key]
        return float((a - b).abs().mean())

    for key in ("last", "target"):
        assert moved(banded, key) < 0.35 * moved(plain, key)
    torch.testing.assert_close(banded.views(frames, flows)["past_flows"], plain.views(frames, flows)["past_flows"])
    with torch.no_grad():
        fea = [m.frame_encoder(m.views(x, flows)["last"])[0] for m in (banded, plain) for x in (frames, soft)]
    assert float((fea[0] - fea[1]).abs().mean()) < 0.5 * float((fea[2] - fea[3]).abs().mean())
    assert_onnx_matches_torch(banded, frames, flows, tmp_path / "banded.onnx")


def test_appearance_sigma_is_checked():
    with pytest.raises(ValueError, match="appearance_sigma"):
        AMSRCNet(**ARGS, appearance_sigma=-1.0)


@pytest.mark.parametrize("bad", [{"lambda_soft": -1.0}, {"soft_sigma": (0.0, 1.0)}, {"soft_sigma": (2.0, 1.0)},
                                 {"soft_reach": "decoder"}, {"soft_match": "cosine"}])
def test_soft_view_settings_are_checked(bad):
    with pytest.raises(ValueError, match="soft"):
        AMSRCNet(**ARGS, **bad)


def test_the_speed_error_against_either_flow_counts_only_what_disagrees_with_both(clip, tmp_path):
    """``speed_against="either"``: the implied speed of frame t-1 is judged against the nearer of the
    speeds of flow t-2 -> t-1 and flow t-1 -> t, so a pixel that agrees with either scores no error, one
    that disagrees with both (a speed anomaly) keeps the smaller error; same weights, score only."""
    torch.manual_seed(0)
    either = AMSRCNet(**ARGS, speed_against="either").eval()
    last = AMSRCNet(**ARGS).eval()
    last.load_state_dict(either.state_dict())
    frames, flows = clip
    flows = flows.clone()
    flows[:, -1] = 3.0 * flows[:, -2]  # the newer flow three times as fast as the older one
    with torch.no_grad():
        v = either.split(frames, flows)
        app = either(frames, flows)["app_speed"]
        err_next = (app - speed(v["target_flow"])) ** 2
        torch.testing.assert_close(either.speed_error(app, v), torch.minimum(last.speed_error(app, v), err_next))
        moving = speed(v["last_flow"]) > 0.01  # where the squares move
        implied_new = speed(v["target_flow"])  # an appearance that implies the newer flow's speed exactly
        assert float(either.speed_error(implied_new, v).max()) == 0.0
        assert float(last.speed_error(implied_new, v)[moving].min()) > 0.0
        implied_neither = speed(v["target_flow"]) + 1.0  # faster than both: the smaller error stays
        torch.testing.assert_close(either.speed_error(implied_neither, v)[moving],
                                   torch.ones_like(implied_neither)[moving])
        err_either = either.speed_error(app, v)
        comps_either, _, _ = either.score(frames, flows)
        comps_last, _, _ = last.score(frames, flows)
    torch.testing.assert_close(comps_either[:, :2], comps_last[:, :2])  # cosine and frame error as they were
    torch.testing.assert_close(comps_either[:, 2], patch_max(err_either, either.patch))
    assert_onnx_matches_torch(either, frames, flows, tmp_path / "either.onnx")


def test_speed_against_is_checked():
    with pytest.raises(ValueError, match="speed_against"):
        AMSRCNet(**ARGS, speed_against="next")


def test_masked_quantile_is_the_lower_quantile_of_the_kept_pixels_and_zero_without_any():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 8, 8)
    keep = torch.rand(3, 1, 8, 8) > 0.5
    keep[2] = False
    q = masked_quantile(x, keep, 0.9)
    assert q.shape == (3, 1, 1, 1)
    for b in range(2):
        want = torch.quantile(x[b][keep[b]], 0.9, interpolation="lower")
        assert float(q[b]) == pytest.approx(float(want))
    assert float(q[2]) == 0.0


def test_the_speed_floor_takes_out_motion_measured_where_the_appearance_implies_standing_still(clip, tmp_path):
    """``speed_floor``: a flow raised everywhere (a shaking, noisy or coded picture) adds no error where the
    appearance implies standing still, and an object moving well above that floor still scores; masked
    pixels do not set the floor; with ``flow_sigma`` zero-mean noise in the flow's vectors cancels. Score
    only: same weights, cosine and frame error unchanged, and the graph exports."""
    torch.manual_seed(0)
    floor = AMSRCNet(**ARGS, speed_against="either", speed_floor=0.9, flow_sigma=1.0).eval()
    plain = AMSRCNet(**ARGS, speed_against="either").eval()
    plain.load_state_dict(floor.state_dict())
    frames, _ = clip
    b = frames.shape[0]
    app = torch.zeros(b, 1, H, W)
    app[..., 8:16, 8:16] = 1.0  # the appearance implies one object moving at speed 1 (flow_scale units)
    flow = torch.zeros(b, 2, H, W)
    flow[:, 0] = 0.05  # the whole picture drifts (model units): what stabilisation left of a shake
    flow[:, 0, 8:16, 8:16] = 1.0
    flow[:, 0, 24:32, 30:40] = 3.0  # something fast where the appearance implies nothing: an anomaly
    v = {"last_flow": flow, "target_flow": flow}
    with torch.no_grad():
        e_plain, e_floor = plain.speed_error(app, v), floor.speed_error(app, v)
        moving = (speed(flow) > 0.5).float()
        background = torch.nn.functional.max_pool2d(moving, 9, 1, 4) == 0  # away from both objects' smoothed flow
        assert float(e_plain[background].min()) == pytest.approx(0.05 ** 2, rel=1e-3)
        assert float(e_floor[background].max()) < 1e-4
        assert float(e_floor[..., 26:30, 32:38].min()) > 8.0  # (3 - 0) ** 2, less the floor and the smoothing
        masked = torch.ones(b, 1, H, W)
        drifting = flow.clone()
        drifting[:, 0, :, :8] = 0.5  # the strip a large shift uncovered (a sixth of the picture): masked, so it
        masked[..., :8] = 0.0  # does not set the floor (unmasked, it would: 0.5 is over the 90th percentile)
        unsmoothed = AMSRCNet(**ARGS, speed_against="either", speed_floor=0.9).eval()
        e_masked = unsmoothed.speed_error(app, {"last_flow": drifting, "target_flow": drifting}, masked)
        e_unmasked = unsmoothed.speed_error(app, {"last_flow": drifting, "target_flow": drifting})
        # the object moving as its appearance implies: nothing over the true floor (0.05), (1 - 0.75 ** 0.5) ** 2
        # over the strip's (0.5)
        assert float(e_masked[..., 8:16, 8:16].max()) < 1e-5
        assert float(e_unmasked[..., 8:16, 8:16].min()) == pytest.approx((1 - 0.75 ** 0.5) ** 2, rel=1e-3)
        noise = 0.05 * torch.randn(b, 2, H, W)  # zero-mean noise in the vectors
        smooth = AMSRCNet(**ARGS, flow_sigma=1.0).eval()
        assert float(smooth.measured_speed(noise, app).mean()) < 0.6 * float(speed(noise).mean())
        comps_floor, _, _ = floor.score(frames, clip[1])
        comps_plain, _, _ = plain.score(frames, clip[1])
    torch.testing.assert_close(comps_floor[:, :2], comps_plain[:, :2])
    assert_onnx_matches_torch(floor, frames, clip[1], tmp_path / "floor.onnx")


@pytest.mark.parametrize("bad", [{"speed_floor": -0.1}, {"speed_floor": 1.0}, {"flow_sigma": -1.0}])
def test_speed_floor_and_flow_sigma_are_checked(bad):
    with pytest.raises(ValueError, match="speed_floor"):
        AMSRCNet(**ARGS, **bad)


def test_the_floor_read_on_a_strided_grid_is_the_quantile_of_those_pixels_and_exports(clip, tmp_path):
    """``floor_stride``: the floor is the quantile over every k-th pixel of each row and column (the sort,
    the floor's main cost, a k-squared-th as long); 1, the default, keeps models made before it as they were."""
    torch.manual_seed(0)
    full = AMSRCNet(**ARGS, speed_floor=0.9).eval()
    strided = AMSRCNet(**ARGS, speed_floor=0.9, floor_stride=4).eval()
    strided.load_state_dict(full.state_dict())
    assert AMSRCNet(**ARGS).floor_stride == 1 and strided.model_args()["floor_stride"] == 4
    app = torch.zeros(2, 1, H, W)
    flow = torch.rand(2, 2, H, W)
    with torch.no_grad():
        s = speed(flow)
        for net, k in ((full, 1), (strided, 4)):
            floor = torch.quantile(s[:, :, ::k, ::k].reshape(2, -1), 0.9, dim=1, interpolation="lower")
            want = (s * s - floor.view(2, 1, 1, 1) ** 2).clamp_min(0.0).add(1e-8).sqrt()
            torch.testing.assert_close(net.measured_speed(flow, app), want)
    assert_onnx_matches_torch(strided, clip[0], clip[1], tmp_path / "strided.onnx")


def test_the_speed_error_counts_where_the_picture_has_detail_and_exports(clip, tmp_path):
    """``speed_texture``: false motion on a flat part of the picture (a codec's blocks spread by the flow's
    filling-in) adds almost no error, an object with edges moving against its appearance keeps nearly all of
    its error; 0, the default, keeps models made before it as they were. Score only: the same weights, the
    cosine and the frame error unchanged, and the graph exports."""
    torch.manual_seed(0)
    textured = AMSRCNet(**ARGS, speed_texture=0.12).eval()
    plain = AMSRCNet(**ARGS).eval()
    textured.load_state_dict(plain.state_dict())
    assert plain.speed_texture == 0.0 and textured.model_args()["speed_texture"] == 0.12
    last = torch.zeros(2, C, H, W)
    last[..., 20:28, 30:40] = 1.0  # a bright object on a flat ground ([-1, 1] units)
    flow = torch.zeros(2, 2, H, W)
    flow[:, 0, 2:10, 2:14] = 0.5  # flat ground seeming to move
    flow[:, 0, 20:28, 30:40] = 2.0  # the object moving
    app = torch.zeros(2, 1, H, W)  # its appearance implies nothing moves
    v = {"last_flow": flow, "target_flow": flow, "last": last}
    with torch.no_grad():
        c = contrast(last)
        assert float(c[..., 5, 8].max()) < 1e-5 and float(c[..., 24, 30].min()) == pytest.approx(1.0)
        e_plain, e_tex = plain.speed_error(app, v), textured.speed_error(app, v)
        assert float(e_plain[..., 4:8, 4:12].min()) == pytest.approx(0.25, rel=1e-4)
        assert float(e_tex[..., 4:8, 4:12].max()) < 1e-6
        edge = (slice(None), slice(None), slice(20, 28), slice(30, 32))  # within 2 px of the object's edge
        torch.testing.assert_close(e_tex[edge], e_plain[edge], rtol=0.02, atol=0.0)
        frames, flows = clip
        comps_tex, _, _ = textured.score(frames, flows)
        comps_plain, _, _ = plain.score(frames, flows)
    torch.testing.assert_close(comps_tex[:, :2], comps_plain[:, :2])
    assert_onnx_matches_torch(textured, frames, flows, tmp_path / "textured.onnx")


def test_speed_texture_is_checked():
    with pytest.raises(ValueError, match="speed_texture"):
        AMSRCNet(**ARGS, speed_texture=-0.1)


@pytest.mark.parametrize("bad", [0, 17, 2.0])
def test_floor_stride_is_checked(bad):
    with pytest.raises(ValueError, match="floor_stride"):
        AMSRCNet(**ARGS, floor_stride=bad)
