"""The one place a compute device is chosen; everything else receives the chosen device."""

from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; asking for ``cuda`` without CUDA is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
