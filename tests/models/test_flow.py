"""Tests for models.flow (TV-L1 in PyTorch, OpenCV DIS) and training.flow_check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from amvad.models.flow import FLOW_NAMES, MAX_SPAN, DISFlow, FlowEstimator, TVL1Flow, build_flow, trailing_mean

PED2 = (Path(__file__).parents[2] / "../shared/datasets/ped2").resolve()
SIZE = 96
MARGIN = 16
SHIFT = (1.5, -0.7)  # (u, v) in pixels


def texture(seed: int, size: int = SIZE) -> np.ndarray:
    """Smooth random float32 texture in [0.1, 0.9]."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(size, size)).astype(np.float32)
    img = cv2.GaussianBlur(noise, (0, 0), 2.0) + 0.5 * cv2.GaussianBlur(noise, (0, 0), 5.0)
    img = (img - img.min()) / (img.max() - img.min())
    return 0.1 + 0.8 * img


def sample(img: np.ndarray, u: np.ndarray | float, v: np.ndarray | float) -> np.ndarray:
    """img sampled at (x + u, y + v): cv2.remap, i.e. the OpenCV flow convention."""
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(img, (xx + u).astype(np.float32), (yy + v).astype(np.float32),
                     interpolation=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101)


def shifted_pair(seed: int = 0, shift: tuple[float, float] = SHIFT) -> tuple[torch.Tensor, torch.Tensor]:
    """(prev, nxt) as (1, 1, H, W) tensors with prev(y, x) = nxt(y + v, x + u) for a constant (u, v)."""
    nxt = texture(seed)
    prev = sample(nxt, shift[0], shift[1])
    return torch.from_numpy(prev)[None, None], torch.from_numpy(nxt)[None, None]


def interior(flow: torch.Tensor) -> torch.Tensor:
    return flow[..., MARGIN:-MARGIN, MARGIN:-MARGIN]


@pytest.fixture(scope="module")
def tvl1() -> FlowEstimator:
    return build_flow("default")


@pytest.fixture(scope="module")
def dis() -> FlowEstimator:
    return build_flow("dis")


@pytest.mark.parametrize("name, tol", [("tvl1", 0.1), ("dis", 0.15)])
def test_recovers_translation(name: str, tol: float) -> None:
    prev, nxt = shifted_pair()
    flow = build_flow(name)(prev, nxt)
    assert flow.shape == (1, 2, SIZE, SIZE) and flow.dtype == torch.float32
    mean = interior(flow).mean(dim=(0, 2, 3))
    assert abs(mean[0].item() - SHIFT[0]) < tol, mean
    assert abs(mean[1].item() - SHIFT[1]) < tol, mean
    epe = (interior(flow) - torch.tensor(SHIFT).view(1, 2, 1, 1)).norm(dim=1).mean().item()
    assert epe < 2 * tol, epe


@pytest.mark.parametrize("name", ["tvl1", "dis"])
def test_sign_convention_matches_cv2_remap(name: str) -> None:
    # A smooth non-uniform motion; warping nxt by the estimated flow must reproduce prev, the negated
    # flow must not.
    nxt = texture(3)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    u = 1.2 + 0.8 * np.sin(2 * math.pi * yy / SIZE)
    v = -0.9 + 0.6 * np.cos(2 * math.pi * xx / SIZE)
    prev = sample(nxt, u, v)
    flow = build_flow(name)(torch.from_numpy(prev)[None, None], torch.from_numpy(nxt)[None, None])
    fu, fv = flow[0, 0].numpy(), flow[0, 1].numpy()
    inner = (slice(MARGIN, -MARGIN), slice(MARGIN, -MARGIN))
    err_right = np.abs(sample(nxt, fu, fv) - prev)[inner].mean()
    err_wrong = np.abs(sample(nxt, -fu, -fv) - prev)[inner].mean()
    err_none = np.abs(nxt - prev)[inner].mean()
    assert err_right < 0.25 * err_none, (err_right, err_none)
    assert err_wrong > err_none, (err_wrong, err_none)
    epe = np.hypot(fu - u, fv - v)[inner].mean()
    assert epe < 0.3, epe


@pytest.mark.parametrize("name", ["tvl1", "dis"])
def test_batch_matches_single_items(name: str) -> None:
    est = build_flow(name)
    p0, n0 = shifted_pair(0)
    p1, n1 = shifted_pair(1, shift=(-0.8, 1.1))
    batched = est(torch.cat([p0, p1]), torch.cat([n0, n1]))
    single = torch.cat([est(p0, n0), est(p1, n1)])
    assert batched.shape == (2, 2, SIZE, SIZE)
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_rgb_input_uses_luminance(tvl1: FlowEstimator) -> None:
    prev, nxt = shifted_pair()
    gray = tvl1(prev, nxt)
    rgb = tvl1(prev.expand(-1, 3, -1, -1), nxt.expand(-1, 3, -1, -1))
    torch.testing.assert_close(rgb, gray, atol=1e-3, rtol=1e-3)


def test_default_spec_and_round_trip() -> None:
    default = build_flow()
    assert isinstance(default, TVL1Flow)
    spec = default.spec
    assert spec["name"] == "tvl1"
    assert set(spec) == {"name", "levels", "warps", "iterations", "lambda_", "tau", "theta", "scale_step",
                         "median_filter"}
    assert (spec["lambda_"], spec["tau"], spec["theta"], spec["scale_step"]) == (0.15, 0.25, 0.3, 0.5)
    assert spec["median_filter"] is True
    prev, nxt = shifted_pair()
    for est in (default, build_flow("tvl1", levels=2, warps=2, iterations=4, median_filter=False),
                build_flow("dis", preset="fast")):
        spec = json.loads(json.dumps(est.spec))  # JSON-serialisable, survives a round trip
        rebuilt = build_flow(**spec)
        assert type(rebuilt) is type(est)
        assert rebuilt.spec == est.spec
        torch.testing.assert_close(rebuilt(prev, nxt), est(prev, nxt), atol=0, rtol=0)
    assert isinstance(build_flow("dis"), DISFlow) and build_flow("dis").spec == {"name": "dis", "preset": "medium"}


def test_a_span_averages_the_last_flows_and_travels_in_the_spec() -> None:
    # given five consecutive flows of constant fields 0, 3, 0, 3, 6 (a coded object moving in jumps)
    flows = torch.tensor([0.0, 3.0, 0.0, 3.0, 6.0]).reshape(5, 1, 1, 1).expand(5, 2, 4, 4).contiguous()
    # then span 3 serves the mean of the last three (fewer at the start), span 1 the flows as measured
    got = trailing_mean(flows, 3)[:, 0, 0, 0].tolist()
    assert got == pytest.approx([0.0, 1.5, 1.0, 2.0, 3.0])
    assert trailing_mean(flows, 1) is flows
    # and a stream's last few flows give its newest the same value as the whole clip does
    torch.testing.assert_close(trailing_mean(flows[2:], 3)[-1], trailing_mean(flows, 3)[-1], atol=0, rtol=0)
    # and the span is part of the spec (absent when 1, so older models' specs read the same)
    est = build_flow("default", span=3)
    assert est.span == 3 and build_flow(**json.loads(json.dumps(est.spec))).span == 3
    assert "span" not in build_flow().spec and build_flow("dis", span=2).spec == {"name": "dis", "preset": "medium",
                                                                                  "span": 2}


@pytest.mark.parametrize("span", [0, MAX_SPAN + 1, 2.0, True])
def test_a_bad_span_raises(span) -> None:
    with pytest.raises(ValueError, match="span"):
        build_flow("tvl1", span=span)


def test_bad_name_raises() -> None:
    with pytest.raises(ValueError, match="farneback") as info:
        build_flow("farneback")
    for allowed in FLOW_NAMES:
        assert allowed in str(info.value)


@pytest.mark.parametrize("name, params, match", [
    ("tvl1", {"warp": 2}, "warp"),
    ("tvl1", {"levels": 0}, "levels"),
    ("tvl1", {"iterations": 2.5}, "iterations"),
    ("tvl1", {"scale_step": 1.0}, "scale_step"),
    ("tvl1", {"median_filter": 1}, "median_filter"),
    ("dis", {"preset": "slow"}, "slow"),
    ("dis", {"levels": 3}, "levels"),
    ("default", {"levels": 3}, "levels"),
])
def test_bad_param_raises(name: str, params: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_flow(name, **params)


@pytest.mark.parametrize("name", ["tvl1", "dis"])
@pytest.mark.parametrize("prev_shape, nxt_shape, dtype", [
    ((1, 2, 32, 32), (1, 2, 32, 32), torch.float32),  # 2 channels
    ((32, 32), (32, 32), torch.float32),  # no batch/channel dims
    ((1, 1, 32, 32), (1, 1, 32, 33), torch.float32),  # mismatch
    ((1, 1, 32, 32), (1, 1, 32, 32), torch.uint8),  # integer images
])
def test_bad_input_raises(name: str, prev_shape: tuple, nxt_shape: tuple, dtype: torch.dtype) -> None:
    est = build_flow(name)
    with pytest.raises(ValueError, match=r"\(.*32.*\)"):
        est(torch.zeros(prev_shape, dtype=dtype), torch.zeros(nxt_shape, dtype=dtype))


def test_gradient_flows_to_nxt() -> None:
    est = build_flow("tvl1", levels=2, warps=2, iterations=5)
    prev, nxt = shifted_pair()
    nxt = nxt.clone().requires_grad_(True)
    flow = est(prev, nxt)
    assert flow.requires_grad
    flow.sum().backward()
    assert nxt.grad is not None
    assert torch.isfinite(nxt.grad).all()
    assert nxt.grad.abs().sum() > 0


def test_gradient_with_flat_regions_is_finite(tvl1: FlowEstimator) -> None:
    # Constant images: zero image gradient and zero flow gradient everywhere, the singular cases.
    prev = torch.full((1, 1, 48, 48), 0.5)
    nxt = torch.full((1, 1, 48, 48), 0.5, requires_grad=True)
    flow = tvl1(prev, nxt)
    assert torch.isfinite(flow).all() and flow.abs().max() < 1e-4
    (flow ** 2).sum().backward()
    assert torch.isfinite(nxt.grad).all()


def test_no_graph_without_grad(tvl1: FlowEstimator) -> None:
    prev, nxt = shifted_pair()
    assert not tvl1(prev, nxt).requires_grad
    with torch.no_grad():
        assert not tvl1(prev, nxt.requires_grad_(True)).requires_grad


def test_dis_is_detached(dis: FlowEstimator) -> None:
    prev, nxt = shifted_pair()
    assert not dis(prev, nxt.requires_grad_(True)).requires_grad


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tvl1_cuda_matches_cpu(tvl1: FlowEstimator) -> None:
    prev, nxt = shifted_pair()
    cpu = tvl1(prev, nxt)
    gpu = tvl1(prev.cuda(), nxt.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-2, rtol=1e-2)
    assert build_flow("dis")(prev.cuda(), nxt.cuda()).device.type == "cuda"


def test_flow_check_synthetic_pairs_are_exact() -> None:
    from amvad.training.flow_check import MAX_MAGNITUDE, make_pair, random_flow

    rng = np.random.default_rng(0)
    frame = (texture(5, 64) * 255).astype(np.uint8)
    gt = random_flow(rng, 64)
    assert gt.shape == (64, 64, 2) and np.hypot(gt[..., 0], gt[..., 1]).max() <= MAX_MAGNITUDE + 1e-4
    prev, nxt = make_pair(frame, gt)
    assert nxt is frame and prev.dtype == np.uint8
    expected = sample(frame.astype(np.float32), gt[..., 0], gt[..., 1])
    assert np.abs(prev.astype(np.float32) - expected).max() <= 0.5 + 1e-3


def test_flow_check_missing_data(tmp_path: Path) -> None:
    from amvad.training.flow_check import run_flow_check

    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        run_flow_check(tmp_path / "nope", progress=False)


@pytest.mark.integration
@pytest.mark.skipif(not PED2.is_dir(), reason=f"Ped2 dataset not found at {PED2}")
def test_flow_check_on_ped2() -> None:
    from amvad.training.flow_check import run_flow_check

    result = run_flow_check(PED2, size=128, pairs=2, progress=False)
    assert {"size", "pairs", "methods", "ratio_default_to_dualtvl1", "threads", "device"} <= set(result)
    assert result["size"] == 128 and result["pairs"] == 2
    assert {"tvl1", "dis", "dualtvl1"} <= set(result["methods"])
    for row in result["methods"].values():
        assert math.isfinite(row["epe"]) and row["epe"] >= 0
        assert math.isfinite(row["ms_per_pair"]) and row["ms_per_pair"] > 0
    assert math.isfinite(result["ratio_default_to_dualtvl1"])
    json.dumps(result)
