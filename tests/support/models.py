"""Plain helpers shared by the model tests (import as ``from tests.support.models import ...``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from amvad.models.contract import INPUT_NAMES, OUTPUT_NAMES, AnomalyModel


def moving_squares(batch: int, gen: torch.Generator, *, anomaly: bool = False, size: int = 8,
                   jump: int = 12, clip_len: int = 4, channels: int = 1, height: int = 32,
                   width: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """Dim squares moving 0-1 px/frame with their exact flow; ``anomaly`` makes the last frame's square
    bright and jump ``jump`` px sideways (and sets the last flow to match)."""
    t_len, h, w = clip_len, height, width
    frames = torch.full((batch, t_len, channels, h, w), 0.1)
    flows = torch.zeros(batch, t_len - 1, 2, h, w)
    for b in range(batch):
        vx, vy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
        x0 = int(torch.randint(jump + 2, w - size - jump - 2, (1,), generator=gen))
        y0 = int(torch.randint(2, h - size - 2, (1,), generator=gen))
        pos = [(x0 + vx * t, y0 + vy * t) for t in range(t_len)]
        if anomaly:
            pos[-1] = (pos[-2][0] + jump, pos[-2][1])
        for t, (x, y) in enumerate(pos):
            bright = anomaly and t == t_len - 1
            frames[b, t, :, y:y + size, x:x + size] = 1.0 if bright else 0.6
            if t < t_len - 1:
                (nx, ny) = pos[t + 1]
                flows[b, t, 0, y:y + size, x:x + size] = nx - x
                flows[b, t, 1, y:y + size, x:x + size] = ny - y
    return frames, flows


def assert_score_outputs(model: AnomalyModel, frames: torch.Tensor, flows: torch.Tensor
                         ) -> torch.Tensor:
    """Put ``model`` in eval mode, score the clip and check the contract's output shapes and ranges:
    components (B, len(component_names)), a non-negative (B, 1, H, W) heatmap and a (B, C, H, W)
    prediction in [0, 1]. Returns the components for model-specific checks."""
    b = frames.shape[0]
    model.eval()
    comps, heat, pred = model.score(frames, flows)
    assert comps.shape == (b, len(model.component_names))
    assert heat.shape == (b, 1, model.height, model.width) and bool((heat >= 0).all())
    assert pred.shape == (b, model.channels, model.height, model.width)
    assert float(pred.min()) >= 0 and float(pred.max()) <= 1
    return comps


def assert_has_grads(*modules: torch.nn.Module) -> None:
    """Every parameter of each module got a finite gradient, and at least one is non-zero."""
    for mod in modules:
        grads = [p.grad for p in mod.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(float(g.abs().sum()) > 0 for g in grads)


def assert_losses_backprop(losses: dict[str, torch.Tensor], names: set[str],
                           *modules: torch.nn.Module) -> None:
    """``losses`` has exactly ``names``, each a finite scalar; their sum backpropagates into every
    parameter of ``modules`` (see :func:`assert_has_grads`)."""
    assert set(losses) == names
    for v in losses.values():
        assert v.dim() == 0 and torch.isfinite(v)
    sum(losses.values()).backward()
    assert_has_grads(*modules)


def assert_bad_shapes_raise(model: AnomalyModel, frames: torch.Tensor, flows: torch.Tensor) -> None:
    """Wrong clip length (forward), wrong flow channels, wrong frame size and a batch mismatch
    (score) all raise ValueError. Leaves the model in eval mode."""
    with pytest.raises(ValueError):
        model(frames[:, 1:], flows)
    model.eval()
    with pytest.raises(ValueError):
        model.score(frames, flows[:, :, :1])
    with pytest.raises(ValueError):
        model.score(frames[..., :-8], flows)
    with pytest.raises(ValueError):
        model.score(frames[:1], flows)


def train_and_score_squares(model: AnomalyModel, steps: int, *, lr: float = 3e-3, batch: int = 8,
                            seed: int = 2, test_seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Train ``model`` with Adam for ``steps`` batches of normal :func:`moving_squares`, then score
    the same test squares twice, normal and with an anomalous last frame and flow. Returns the
    (normal, abnormal) components, each (batch, K); the model is left in eval mode."""
    shape = dict(clip_len=model.clip_len, channels=model.channels, height=model.height,
                 width=model.width)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        frames, flows = moving_squares(batch, gen, **shape)
        loss = sum(model.losses(model(frames, flows), frames, flows).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test_gen = torch.Generator().manual_seed(test_seed)
    state = test_gen.get_state()
    with torch.no_grad():
        normal, _, _ = model.score(*moving_squares(batch, test_gen, **shape))
        test_gen.set_state(state)  # same squares, anomalous last frame and flow
        abnormal, _, _ = model.score(*moving_squares(batch, test_gen, anomaly=True, **shape))
    return normal, abnormal


def assert_rebuild_scores_equal(model: AnomalyModel, frames: torch.Tensor, flows: torch.Tensor,
                                *, reseed: int | None = None) -> AnomalyModel:
    """Rebuild ``model`` from its JSON-round-tripped ``model_args`` (under ``torch.manual_seed(reseed)``
    when given, so random init differs), load its state dict and check that both score identically.
    Leaves both in eval mode and returns the clone."""
    args = json.loads(json.dumps(model.model_args()))
    if reseed is not None:
        torch.manual_seed(reseed)
    clone = type(model)(**args)
    clone.load_state_dict(model.state_dict())
    model.eval(), clone.eval()
    with torch.no_grad():
        for a, b in zip(model.score(frames, flows), clone.score(frames, flows)):
            torch.testing.assert_close(a, b)
    return clone


def assert_onnx_matches_torch(model: AnomalyModel, frames: torch.Tensor, flows: torch.Tensor,
                              path: str | Path) -> None:
    """Export ``model.score`` the way ``amvad export`` does (``training.export.export_onnx``: contract
    names, dynamic batch) at batch 1, then check ONNX Runtime against PyTorch on the full batch (1e-4).
    Skips when onnxruntime is missing. Puts the model in eval mode; export must leave it there."""
    ort = pytest.importorskip("onnxruntime")
    from amvad.training.export import export_onnx  # imports onnx/onnxruntime itself

    model.eval()
    export_onnx(model, frames[:1], flows[:1], str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mask = torch.ones(frames.shape[0], 1, *frames.shape[-2:])
    got = sess.run(None, dict(zip(INPUT_NAMES, (frames.numpy(), flows.numpy(), mask.numpy()))))
    assert not model.training
    with torch.no_grad():
        want = model.score(frames, flows)
    assert len(got) == len(want) == len(OUTPUT_NAMES)
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape)
        np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=1e-4)
