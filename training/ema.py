"""An exponential moving average of a model's weights (``optim.ema``): the weights a run ends on depend on
its last few hundred noisy steps, and so on the seed; their running average is a steadier model of the
same training. The average is what the finished checkpoint holds (and so what is exported and served);
the raw weights are kept beside it so a resumed run trains on from where it stopped."""

from __future__ import annotations

import torch


class WeightAverage:
    """A running average of every floating-point entry of a model's state (parameters and buffers such as
    batch-norm statistics and memory items); integer buffers (step counts) are taken as they are.

    The decay starts low and rises to ``decay`` ((1 + n) / (10 + n) after n updates), so the first,
    untrained weights are forgotten quickly instead of weighing on the average for ``1 / (1 - decay)``
    steps."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        """The average and step count of a saved run; the decay stays this one's (the config's)."""
        self.updates = state["updates"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}

    def averaged(self) -> dict:
        """The averaged state, ready for ``model.load_state_dict`` (which copies it; the average goes on)."""
        return dict(self.shadow)
