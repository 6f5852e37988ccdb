"""MNAD-style memory module (Park et al., CVPR 2020): read, update and the feature losses.

Items are a buffer, not a parameter: they are never touched by the optimiser, only by the update rule
in training mode, and they travel with the state dict. In eval mode the module is a pure function
(normalise, cosine attention over items, concatenate), so it traces into ONNX without state changes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Memory(nn.Module):
    """``num_items`` unit-norm items of dimension ``dim``.

    ``forward(query)`` with query (B, D, h, w) returns a dict:
        output:  (B, 2D, h, w) concat of the L2-normalised query and its memory read;
        query:   (B, D, h, w) the L2-normalised query;
        read:    (B, D, h, w) softmax(cosine(query, items)) @ items;
    and, in training mode only, the scalar feature losses ``compactness`` and ``separateness``
    (computed against the items as they were before this call's update) and then the items are updated.
    """

    def __init__(self, num_items: int, dim: int, *, margin: float = 1.0) -> None:
        super().__init__()
        if num_items < 2:
            raise ValueError(f"num_items must be >= 2 (separateness needs two items), got {num_items}")
        self.num_items = num_items
        self.dim = dim
        self.margin = margin
        self.register_buffer("items", F.normalize(torch.randn(num_items, dim), dim=1))

    def read(self, query: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Memory read for a normalised query (B, D, h, w) -> (B, D, h, w). Plain MatMul/Softmax."""
        items = self.items if items is None else items
        q = query.permute(0, 2, 3, 1)                     # (B, h, w, D)
        weights = torch.softmax(q @ items.t(), dim=-1)   # (B, h, w, N): softmax over items
        return (weights @ items).permute(0, 3, 1, 2)

    def feature_losses(self, query: torch.Tensor, items: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(compactness, separateness) for a normalised query (B, D, h, w).

        compactness: MSE (mean over queries and D, as MNAD's ``MSELoss``) to the nearest item;
        separateness: triplet margin loss (L2 distance) with nearest / second-nearest item.
        Gradients flow into the queries only (items are a buffer).
        """
        items = self.items if items is None else items
        q = query.permute(0, 2, 3, 1).reshape(-1, self.dim)
        top2 = torch.topk(q @ items.t(), 2, dim=1).indices
        pos, neg = items[top2[:, 0]], items[top2[:, 1]]
        compact = F.mse_loss(q, pos)
        separate = F.triplet_margin_loss(q, pos, neg, margin=self.margin)
        return compact, separate

    @torch.no_grad()
    def update(self, query: torch.Tensor) -> None:
        """MNAD update: item m += sum over queries k whose nearest item is m of
        (v'_{k,m} / max_{k' -> m} v'_{k',m}) q_k, where v' is the softmax over queries; then L2-normalise.
        Items with no assigned query stay unchanged. In place on the buffer."""
        q = query.detach().permute(0, 2, 3, 1).reshape(-1, self.dim)
        sim = q @ self.items.t()                                      # (M, N)
        v = torch.softmax(sim, dim=0)                                  # softmax over queries
        assign = F.one_hot(sim.argmax(1), self.num_items).to(q.dtype)  # (M, N) nearest item
        v = v * assign
        v = v / v.amax(0, keepdim=True).clamp_min(1e-12)
        self.items.copy_(F.normalize(self.items + v.t() @ q, dim=1))

    def forward(self, query: torch.Tensor) -> dict[str, torch.Tensor]:
        q = F.normalize(query, dim=1)
        # Snapshot in training: the read and losses keep their autograd views of the old items while
        # the buffer is updated in place afterwards.
        items = self.items.clone() if self.training else self.items
        read = self.read(q, items)
        out = {"output": torch.cat([q, read], 1), "query": q, "read": read}
        if self.training:
            out["compactness"], out["separateness"] = self.feature_losses(q, items)
            self.update(q)
        return out
