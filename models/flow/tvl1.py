"""Pyramidal TV-L1 optical flow in plain PyTorch (batched, any device, differentiable).

The algorithm is the duality-based TV-L1 scheme of Zach, Pock and Bischof (2007) in the form described by
Sánchez, Meinhardt-Llopis and Facciolo, "TV-L1 Optical Flow Estimation", IPOL 2013:

* a Gaussian pyramid is built for both images and the flow is estimated coarse to fine;
* at each level the flow is refined by ``warps`` linearisations of the data term around the current flow;
* every linearisation runs ``iterations`` steps of: pointwise thresholding for the auxiliary flow ``v``,
  ``u = v + theta * div(p)``, then the dual (ROF) update of ``p`` with step ``tau / theta``;
* optionally a 3x3 median filter is applied to the flow after each warp (as OpenCV's DualTVL1 does).

Everything is a fixed number of tensor operations (no data-dependent stopping), so the result is
deterministic, the cost is predictable, and autograd can differentiate the unrolled solver with respect to
both images (warping uses ``grid_sample``; no in-place operations on tensors that may require grad).

This module also holds :class:`FlowEstimator`, the base class shared by every estimator in ``models.flow``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

# Defaults, chosen with training/flow_check.py on 256x256 Ped2 pairs: ~40 ms per pair on 2 CPU cores
# (budget ~50 ms) with end-point error ~0.96x that of cv2.optflow.DualTVL1OpticalFlow_create() defaults.
DEFAULT_LEVELS = 4  # pyramid levels: 256 -> 32 px at the coarsest, enough for the ~4 px motions checked
DEFAULT_WARPS = 1  # linearisations per level: a 2nd warp cost more than extra iterations for less EPE gain
DEFAULT_ITERATIONS = 30  # primal-dual iterations per warp: EPE ratio 1.38 at 10, 1.06 at 20, 0.96 at 30
DEFAULT_LAMBDA = 0.15  # data-term weight for images in [0, 255] (Sánchez et al. / OpenCV default)
DEFAULT_TAU = 0.25  # dual time step (OpenCV default; stable for tau <= 0.25)
DEFAULT_THETA = 0.3  # coupling between u and v (Sánchez et al. / OpenCV default)
DEFAULT_SCALE_STEP = 0.5  # pyramid downsampling factor per level
DEFAULT_MEDIAN_FILTER = True  # 3x3 median of the flow after each warp

# Levels coarser than this (smaller side, pixels) are not used: there is too little image left to match.
MIN_LEVEL_SIZE = 16
# Upper bounds on the parameters that set the work per frame pair (a model's metadata carries them, so these
# keep a file from asking for an absurd amount): far above the defaults and OpenCV's (5 scales, 5 warps,
# 300 = 10 x 30 inner iterations); the total, over the pyramid, is bounded by ``models.flow.MAX_FLOW_WORK``.
MAX_LEVELS = 12
MAX_WARPS = 20
MAX_ITERATIONS = 1000
# Floor on |grad I1|^2 in the thresholding step (no division by zero on flat image regions).
_GRAD_EPS = 1e-6
# Keeps the gradient of |grad u| finite where the flow is constant.
_NORM_EPS = 1e-12
# Input images in [0, 1] are scaled to [0, 255], the range lambda_ is tuned for.
_INTENSITY_SCALE = 255.0
# ITU-R BT.601 luminance, the same weights cv2.cvtColor(RGB2GRAY) uses.
_LUMA = (0.299, 0.587, 0.114)


class FlowEstimator(nn.Module):
    """Base class: ``forward(prev, nxt)`` -> flow ``(B, 2, H, W)`` float32 in pixels, OpenCV convention.

    Channel 0 is x (u), channel 1 is y (v), with ``prev(y, x) ~ nxt(y + v, x + u)``. Inputs are float
    tensors ``(B, 1 or 3, H, W)`` in [0, 1]; three channels are converted to luminance.
    ``spec`` is a JSON-serialisable dict such that ``build_flow(**spec)`` rebuilds the same estimator.
    """

    name: ClassVar[str] = ""
    span: int = 1  # set by build_flow: how many consecutive flows each served flow averages (models.flow.span)

    def params(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def work(self, height: int, width: int) -> int:  # pragma: no cover - overridden
        """The estimator's work per frame pair at ``height`` x ``width``, in TV-L1 pixel-iterations (an
        estimator that costs about one pass over the pixels reports the pixel count)."""
        raise NotImplementedError

    @property
    def pair_spec(self) -> dict[str, Any]:
        """What one frame pair's flow depends on: the name and the estimator's parameters."""
        return {"name": self.name, **self.params()}

    @property
    def spec(self) -> dict[str, Any]:
        """:attr:`pair_spec`, and ``span`` when it is not 1 (so older specs read the same)."""
        return {**self.pair_spec, **({"span": self.span} if self.span != 1 else {})}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params().items())


def check_pair(prev: torch.Tensor, nxt: torch.Tensor, *, min_size: int = 4) -> None:
    """Raise ValueError unless ``prev`` and ``nxt`` are same-shaped float (B, 1|3, H, W) tensors."""
    for label, t in (("prev", prev), ("nxt", nxt)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{label} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{label} must be a floating-point tensor in [0, 1], got dtype {t.dtype} "
                             f"with shape {tuple(t.shape)}")
        if t.dim() != 4 or t.shape[1] not in (1, 3):
            raise ValueError(f"{label} must have shape (B, 1 or 3, H, W), got {tuple(t.shape)}")
        if t.shape[0] < 1 or t.shape[2] < min_size or t.shape[3] < min_size:
            raise ValueError(f"{label} must have B >= 1 and H, W >= {min_size}, got {tuple(t.shape)}")
    if prev.shape != nxt.shape:
        raise ValueError(f"prev and nxt must have the same shape, got {tuple(prev.shape)} and {tuple(nxt.shape)}")
    if prev.device != nxt.device:
        raise ValueError(f"prev and nxt must be on the same device, got {prev.device} and {nxt.device}")


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 1|3, H, W) float -> (B, 1, H, W) float32 luminance (BT.601 weights for 3 channels)."""
    x = x.float()
    if x.shape[1] == 1:
        return x
    return _LUMA[0] * x[:, 0:1] + _LUMA[1] * x[:, 1:2] + _LUMA[2] * x[:, 2:3]


# ----------------------------------------------------------------------------------------------------------
# Small differential operators on (B, C, H, W) tensors (out-of-place, autograd-friendly).


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders, as weighted sums of shifted views.

    (Much faster on CPU than a depthwise ``conv2d`` for these small kernels, and just as differentiable.)
    """
    if sigma <= 0:
        return x
    h, w = x.shape[-2:]
    radius = min(max(1, int(math.ceil(2.5 * sigma))), h - 1, w - 1)
    k = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(-radius, radius + 1)]
    k = [v / sum(k) for v in k]
    p = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    out = p[..., :, 0:w] * k[0]
    for i in range(1, len(k)):
        out = torch.add(out, p[..., :, i:i + w], alpha=k[i])
    p = F.pad(out, (0, 0, radius, radius), mode="reflect")
    out = p[..., 0:h, :] * k[0]
    for i in range(1, len(k)):
        out = torch.add(out, p[..., i:i + h, :], alpha=k[i])
    return out


def central_gradient(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences (half the step across two pixels) with replicated borders: (gx, gy)."""
    p = F.pad(img, (1, 1, 1, 1), mode="replicate")
    gx = 0.5 * (p[..., 1:-1, 2:] - p[..., 1:-1, :-2])
    gy = 0.5 * (p[..., 2:, 1:-1] - p[..., :-2, 1:-1])
    return gx, gy


def _median3x3(u: torch.Tensor) -> torch.Tensor:
    """3x3 median per channel with replicated borders (a min/max sorting network, differentiable)."""
    p = F.pad(u, (1, 1, 1, 1), mode="replicate")
    h, w = u.shape[-2:]
    v = [p[..., dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]

    def sort2(i: int, j: int) -> None:
        a, b = v[i], v[j]
        v[i], v[j] = torch.minimum(a, b), torch.maximum(a, b)

    # Median-of-9 selection network (19 compare-exchanges; only the median ends up in place).
    for i, j in ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8),
                 (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2)):
        sort2(i, j)
    return v[4]


def _primal_dual_steps(u: torch.Tensor, px: torch.Tensor, py: torch.Tensor, rho_c: torch.Tensor,
                       ix: torch.Tensor, iy: torch.Tensor, grad_i: torch.Tensor, neg_inv_grad: torch.Tensor,
                       l_t: float, taut: float, theta: float, iterations: int,
                       norm_eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``iterations`` primal-dual steps of one warp (plain Python: what a trace to ONNX unrolls; eager
    calls go through the TorchScript copy below)."""
    for _ in range(iterations):
        rho = torch.addcmul(torch.addcmul(rho_c, ix, u[:, 0:1]), iy, u[:, 1:2])
        # Pointwise minimisation of the linearised data term, v = u + step * grad(I1): the three-case
        # rule of Sanchez et al. is exactly -rho / |grad I1|^2 clipped to [-lambda*theta, lambda*theta].
        step = torch.clamp(rho * neg_inv_grad, -l_t, l_t)
        v = torch.addcmul(u, step, grad_i)
        # ROF step: u from v and the dual variable (backward-difference divergence, the negative adjoint
        # of the forward gradient; px/py are zero on the last column/row), then the projected dual update.
        div = (px - F.pad(px[..., :, :-1], [1, 0, 0, 0])) + (py - F.pad(py[..., :-1, :], [0, 0, 1, 0]))
        u = torch.add(v, div, alpha=theta)
        ux = F.pad(u[..., :, 1:] - u[..., :, :-1], [0, 1, 0, 0])
        uy = F.pad(u[..., 1:, :] - u[..., :-1, :], [0, 0, 0, 1])
        norm = torch.sqrt(ux * ux + uy * uy + norm_eps) * taut + 1.0
        px = torch.add(px, ux, alpha=taut) / norm
        py = torch.add(py, uy, alpha=taut) / norm
    return u, px, py


# TorchScript: the loop of ~20 small operations runs in the interpreter, not Python, so it costs less per
# step and leaves the GIL to other threads more often (the service runs flow beside decoding and publishing).
_primal_dual = torch.jit.script(_primal_dual_steps)


def _warp(img: torch.Tensor, flow: torch.Tensor, base_x: torch.Tensor, base_y: torch.Tensor) -> torch.Tensor:
    """Sample ``img`` at ``(x + u, y + v)`` (bilinear, border replication)."""
    h, w = img.shape[-2:]
    gx = (base_x + flow[:, 0]) * (2.0 / (w - 1)) - 1.0
    gy = (base_y + flow[:, 1]) * (2.0 / (h - 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _pyramid_sizes(h: int, w: int, levels: int, scale_step: float) -> list[tuple[int, int]]:
    sizes = [(h, w)]
    while len(sizes) < levels:
        nh, nw = (int(round(s * scale_step)) for s in sizes[-1])
        if min(nh, nw) < MIN_LEVEL_SIZE:
            break
        sizes.append((nh, nw))
    return sizes


def tvl1_flow(i0: torch.Tensor, i1: torch.Tensor, *, levels: int, warps: int, iterations: int,
              lambda_: float, tau: float, theta: float, scale_step: float,
              median_filter: bool) -> torch.Tensor:
    """TV-L1 flow from gray images ``i0`` (prev) to ``i1`` (nxt), both (B, 1, H, W) float32 in [0, 255]."""
    b, _, h, w = i0.shape
    sizes = _pyramid_sizes(int(h), int(w), levels, scale_step)
    pyramid = [torch.cat((i0, i1), dim=1)]
    sigma = 0.6 * math.sqrt(1.0 / scale_step ** 2 - 1.0)
    for size in sizes[1:]:
        pyramid.append(F.interpolate(gaussian_blur(pyramid[-1], sigma), size=size, mode="bilinear",
                                     align_corners=False))

    l_t = lambda_ * theta
    taut = tau / theta
    u = torch.zeros(b, 2, *sizes[-1], dtype=i0.dtype, device=i0.device)
    for level in range(len(sizes) - 1, -1, -1):
        lh, lw = sizes[level]
        if u.shape[-2:] != (lh, lw):
            ch, cw = u.shape[-2:]
            u = F.interpolate(u, size=(lh, lw), mode="bilinear", align_corners=False)
            u = u * torch.tensor([lw / cw, lh / ch], dtype=u.dtype, device=u.device).view(1, 2, 1, 1)
        img0 = pyramid[level][:, 0:1]
        img1 = pyramid[level][:, 1:2]
        i1x, i1y = central_gradient(img1)
        stack1 = torch.cat((img1, i1x, i1y), dim=1)
        base_y, base_x = torch.meshgrid(torch.arange(lh, dtype=u.dtype, device=u.device),
                                        torch.arange(lw, dtype=u.dtype, device=u.device), indexing="ij")
        px = torch.zeros_like(u)
        py = torch.zeros_like(u)
        for _ in range(warps):
            warped = _warp(stack1, u, base_x, base_y)
            i1w, ix, iy = warped[:, 0:1], warped[:, 1:2], warped[:, 2:3]
            grad_i = warped[:, 1:3]  # (B, 2, H, W): gradient of nxt at the warped positions
            neg_inv_grad = -1.0 / (ix * ix + iy * iy).clamp_min(_GRAD_EPS)
            rho_c = i1w - ix * u[:, 0:1] - iy * u[:, 1:2] - img0
            steps = _primal_dual_steps if torch.jit.is_tracing() else _primal_dual
            u, px, py = steps(u, px, py, rho_c, ix, iy, grad_i, neg_inv_grad, l_t, taut, theta,
                              iterations, _NORM_EPS)
            if median_filter:
                u = _median3x3(u)
    return u


def _as_int(name: str, value: Any, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not minimum <= value <= maximum:
        raise ValueError(f"tvl1 parameter {name!r} must be an int in [{minimum}, {maximum}], got {value!r}")
    return int(value)


def _as_float(name: str, value: Any, low: float, high: float, *, high_inclusive: bool = True) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    value_f = float(value) if ok else float("nan")
    if not ok or not (low < value_f and (value_f <= high if high_inclusive else value_f < high)):
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"tvl1 parameter {name!r} must be a number in ({low}, {high}{bracket}, got {value!r}")
    return value_f


class TVL1Flow(FlowEstimator):
    """Pyramidal TV-L1 optical flow (see the module docstring); differentiable w.r.t. both inputs."""

    name: ClassVar[str] = "tvl1"

    def __init__(self, levels: int = DEFAULT_LEVELS, warps: int = DEFAULT_WARPS,
                 iterations: int = DEFAULT_ITERATIONS, lambda_: float = DEFAULT_LAMBDA,
                 tau: float = DEFAULT_TAU, theta: float = DEFAULT_THETA, scale_step: float = DEFAULT_SCALE_STEP,
                 median_filter: bool = DEFAULT_MEDIAN_FILTER) -> None:
        super().__init__()
        self.levels = _as_int("levels", levels, 1, MAX_LEVELS)
        self.warps = _as_int("warps", warps, 1, MAX_WARPS)
        self.iterations = _as_int("iterations", iterations, 1, MAX_ITERATIONS)
        self.lambda_ = _as_float("lambda_", lambda_, 0.0, math.inf)
        self.tau = _as_float("tau", tau, 0.0, 0.25)
        self.theta = _as_float("theta", theta, 0.0, math.inf)
        self.scale_step = _as_float("scale_step", scale_step, 0.0, 1.0, high_inclusive=False)
        if not isinstance(median_filter, bool):
            raise ValueError(f"tvl1 parameter 'median_filter' must be a bool, got {median_filter!r}")
        self.median_filter = median_filter

    def params(self) -> dict[str, Any]:
        return {"levels": self.levels, "warps": self.warps, "iterations": self.iterations,
                "lambda_": self.lambda_, "tau": self.tau, "theta": self.theta,
                "scale_step": self.scale_step, "median_filter": self.median_filter}

    def work(self, height: int, width: int) -> int:
        """Pixel-iterations per frame pair at ``height`` x ``width``: the pixels of every pyramid level used,
        times warps and iterations (what the solver's cost is proportional to)."""
        pixels = sum(h * w for h, w in _pyramid_sizes(height, width, self.levels, self.scale_step))
        return pixels * self.warps * self.iterations

    def forward(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        check_pair(prev, nxt)
        needs_grad = torch.is_grad_enabled() and (prev.requires_grad or nxt.requires_grad)
        with torch.set_grad_enabled(needs_grad):
            i0 = to_gray(prev) * _INTENSITY_SCALE
            i1 = to_gray(nxt) * _INTENSITY_SCALE
            return tvl1_flow(i0, i1, **self.params())
