"""Fixtures shared by the model tests; plain helper functions live in ``tests/models/helpers.py``."""

from __future__ import annotations

import pytest
import torch

from tests.support.models import moving_squares


@pytest.fixture
def single_thread():
    """Tiny convs run faster on one thread, and far faster on a loaded shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def clip() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 4-frame 1x32x48 moving-square clips with their exact flows (deterministic)."""
    return moving_squares(2, torch.Generator().manual_seed(0))


@pytest.fixture
def warm_model(model, clip):
    """The test module's ``model`` after one training-mode forward on ``clip``, so batch-norm
    statistics (and any memory that updates in training) move away from their initial values."""
    model.train()
    model(*clip)
    return model
