"""The flow as a traced graph (models/flow/graph.py) computes what the PyTorch estimator computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amvad.models.flow import build_flow
from amvad.models.flow.graph import exportable, graph_key
from amvad.runtime.backends import available

needs_openvino = pytest.mark.skipif(not available("openvino"), reason="openvino not installed (pip install openvino)")


def textured_pair(batch: int, height: int, width: int, shift: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random texture and the same texture moved by ``shift`` (dy, dx) pixels."""
    g = torch.Generator().manual_seed(4)
    big = torch.nn.functional.avg_pool2d(torch.rand(batch, 1, height + 16, width + 16, generator=g), 5, 1, 2)
    prev = big[..., 8:8 + height, 8:8 + width]
    nxt = big[..., 8 - shift[0]:8 - shift[0] + height, 8 - shift[1]:8 - shift[1] + width]
    return prev.contiguous(), nxt.contiguous()


def test_graph_keys_name_the_estimator_and_the_size():
    a, b = build_flow("default"), build_flow("tvl1", iterations=10)
    assert graph_key(a, 1, 32, 48) == graph_key(build_flow("default"), 1, 32, 48)
    assert len({graph_key(a, 1, 32, 48), graph_key(b, 1, 32, 48), graph_key(a, 1, 48, 48),
                graph_key(a, 3, 32, 48)}) == 4
    assert exportable(a) and not exportable(build_flow("dis"))


@needs_openvino
def test_the_openvino_flow_graph_matches_the_pytorch_flow(tmp_path):
    from amvad.runtime.backends.ov import OpenVinoFlow
    flow = build_flow("default").eval()
    graph = OpenVinoFlow(flow, (1, 32, 48), threads=1, cache_dir=tmp_path)
    prev, nxt = textured_pair(3, 32, 48, (1, 2))  # a batch of pairs runs pair by pair
    with torch.no_grad():
        want = flow(prev, nxt)
    got = graph(prev, nxt)
    assert got.shape == want.shape == (3, 2, 32, 48) and got.dtype == torch.float32
    diff = (got - want).abs()
    assert float(diff.max()) < 1e-2 and float(diff.mean()) < 1e-4
    # the motion is found (x by 2, y by 1 in the middle), so the comparison is not of two zero fields
    mid = want[:, :, 8:24, 12:36].mean(dim=(0, 2, 3))
    np.testing.assert_allclose(mid.numpy(), [2.0, 1.0], atol=0.4)
    # the graph is kept: a second estimator of the same spec and size reuses the file
    files = list((tmp_path / "flow").glob("*.onnx"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    OpenVinoFlow(build_flow("default"), (1, 32, 48), threads=1, cache_dir=tmp_path)
    assert files[0].stat().st_mtime_ns == mtime
