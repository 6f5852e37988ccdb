"""The inference engine's per-model time budget: how much flow + model time one frame of a model may cost
(read on :func:`~runtime.exported_model.cost_clock`: CPU time of the working thread on a CPU, wall time on
CUDA), so that one model on the shared engine cannot starve the others.

At load a model's first frame is measured (:func:`check_budget`) and a model over the budget is refused with
:class:`ModelTooSlow`. At run time the engine's stages report every model batch's cost per frame
(:meth:`ModelBudget.account`), smoothed over batches so that one hiccup does not count; a model over the
budget (its flow alone, or its flow and model together) is *suspended* for ``suspend_s``, doubled for each
suspension in a row up to 8x: while suspended every frame of it is dropped before any work
(:meth:`ModelBudget.refusal` gives the :class:`ModelOverBudget` to answer it with, and counts it), and when
the suspension ends it runs and is measured afresh. A slow model so costs the others at most one batch per
suspension."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .errors import Invalid, Unavailable
from .exported_model import ExportedModel, FrameCost

log = logging.getLogger("amvad.engine")
MAX_SUSPEND_DOUBLINGS = 3  # a model over its budget again and again is suspended for at most 8x suspend_s
BATCH_WEIGHT = 0.3  # weight of the latest batch in a model's cost per frame (a 4x spike in one batch: +90 %)
WARM_TRIES = 2      # warm frames measured again at load when the first frame was over (the fastest counts)


class ModelTooSlow(Invalid):
    """A model whose frame (flow + model) costs more than the engine's per-model budget (HTTP 422)."""


class ModelOverBudget(Unavailable):
    """A frame dropped because its model is suspended for going over the per-model budget at run time."""


def check_budget(model: ExportedModel, budget_ms: float) -> FrameCost:
    """The cost of one frame of ``model``: its warm-up frame, or, while that is over ``budget_ms`` (one-time
    set-up included, or other work on the cores), the fastest of up to ``WARM_TRIES`` frames measured again;
    :class:`ModelTooSlow` when even that is over."""
    cost = model.warmup
    for _ in range(WARM_TRIES):
        if cost.seconds * 1000 <= budget_ms:
            return cost
        cost = min(cost, model.measure(), key=lambda c: c.seconds)
    if cost.seconds * 1000 > budget_ms:
        m = model.meta
        raise ModelTooSlow(f"model {model.path.name} needs {cost.describe()} per frame at {m.height}x{m.width} "
                           f"on {model.device.type}, over the engine's per-model budget of {budget_ms:g} ms "
                           f"(engine.model_budget_ms)")
    return cost


@dataclass
class ModelUsage:
    """One model's cost per frame in each stage (seconds, smoothed over its batches; the load-time frame
    until its first batch there) and its suspension."""
    flow_s: float
    model_s: float
    suspended_until: float = 0.0  # time.monotonic()
    strikes: int = 0              # suspensions in a row
    skipped: int = 0              # frames dropped while suspended
    fresh: set[str] = field(default_factory=set)  # stages whose next batch replaces the cost (after a suspension)

    def update(self, stage: str, per_frame: float) -> None:
        old = getattr(self, f"{stage}_s")
        new = per_frame if stage in self.fresh else (1 - BATCH_WEIGHT) * old + BATCH_WEIGHT * per_frame
        self.fresh.discard(stage)
        setattr(self, f"{stage}_s", new)


class ModelBudget:
    """The budget's book-keeping for every model the engine runs (see the module docstring); called from
    the engine's two stage threads, and from :meth:`usage` by anyone."""

    def __init__(self, budget_ms: float, suspend_s: float) -> None:
        self.budget_s, self.suspend_s = budget_ms / 1000.0, suspend_s
        self._usage: dict[ExportedModel, ModelUsage] = {}
        self._lock = threading.Lock()

    @property
    def budget_ms(self) -> float:
        return self.budget_s * 1000.0

    def admit(self, model: ExportedModel) -> FrameCost:
        """Measure-or-refuse a model at load (:func:`check_budget`) and start its book from that frame."""
        cost = check_budget(model, self.budget_ms)
        with self._lock:
            self._usage.setdefault(model, ModelUsage(cost.flow_s, cost.model_s))
        return cost

    def forget(self, model: ExportedModel) -> None:
        with self._lock:
            self._usage.pop(model, None)

    def of(self, model: ExportedModel) -> ModelUsage:
        usage = self._usage.get(model)
        if usage is None:  # a model handed to the engine already loaded: its warm-up frame to start from
            with self._lock:
                usage = self._usage.setdefault(model, ModelUsage(model.warmup.flow_s, model.warmup.model_s))
        return usage

    def refusal(self, model: ExportedModel, now: float) -> ModelOverBudget | None:
        """The error a frame of ``model`` is dropped with now (counted), or None when it may run."""
        usage = self.of(model)
        if now >= usage.suspended_until:
            return None
        usage.skipped += 1
        return ModelOverBudget(f"model {model.path.name} is suspended for {usage.suspended_until - now:.1f} s "
                               f"more: it cost {(usage.flow_s + usage.model_s) * 1000:.0f} ms per frame, over "
                               f"the per-model budget of {self.budget_ms:g} ms")

    def account(self, model: ExportedModel, stage: str, seconds: float, frames: int) -> None:
        """One batch of ``frames`` frames of ``model`` took ``seconds`` in ``stage`` ("flow" or "model");
        suspend the model when that puts it over the budget."""
        usage = self.of(model)
        usage.update(stage, seconds / frames)
        if stage == "flow":
            over = usage.flow_s > self.budget_s
        else:
            over = usage.flow_s + usage.model_s > self.budget_s
            if not over:
                usage.strikes = 0
        if over:
            usage.strikes += 1
            pause = self.suspend_s * 2 ** min(usage.strikes - 1, MAX_SUSPEND_DOUBLINGS)
            usage.suspended_until = time.monotonic() + pause
            usage.fresh = {"flow", "model"}
            log.warning("model %s over its budget (flow %.0f + model %.0f ms per frame, budget %g ms): its frames "
                        "are dropped for %.0f s", model.path.name, usage.flow_s * 1000, usage.model_s * 1000,
                        self.budget_ms, pause)

    def usage(self, models: list[ExportedModel]) -> dict[str, dict[str, Any]]:
        """Per model (by content hash): its latest cost per frame, the seconds of suspension left and the
        frames dropped for it."""
        now = time.monotonic()
        return {m.sha256: {"model": m.path.name, "flow_ms": u.flow_s * 1000, "model_ms": u.model_s * 1000,
                           "suspended_s": max(0.0, u.suspended_until - now), "skipped": u.skipped}
                for m, u in ((m, self.of(m)) for m in models)}
