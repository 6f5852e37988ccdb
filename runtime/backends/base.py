"""The interface every backend implements, and the records they share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import Invalid


class BackendUnavailable(Invalid):
    """A backend or precision that this machine cannot run (not installed, no such device)."""


@dataclass(frozen=True)
class Precision:
    """The precision a model runs at, what was asked, and why they differ (empty when they don't)."""
    used: str
    requested: str
    note: str = ""


class Backend(ABC):
    """One loaded ONNX graph. ``run`` takes named float32 arrays and gives the outputs in the graph's order;
    ``run_tensors`` takes torch tensors (a GPU backend reads them in place; the default copies to numpy)."""

    name: str
    precision: str
    input_names: frozenset[str]

    @abstractmethod
    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs of one batch, in the graph's output order."""

    def run_tensors(self, feed: dict[str, torch.Tensor]) -> list[np.ndarray]:
        return self.run({k: np.ascontiguousarray(t.detach().float().cpu().numpy()) for k, t in feed.items()})

    def describe(self) -> dict:
        return {"backend": self.name, "precision": self.precision}
