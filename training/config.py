"""Typed training configuration (YAML validated by pydantic; unknown keys are errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from amvad.models.metadata import check_smoothing_drop


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    root: Path = Field(description="dataset root with <split>/frames/<clip>/ folders or <split>/*.mp4")
    train_split: str = "training"
    test_split: str = "testing"
    stride: int = Field(1, ge=1, description="step between sampled target frames")
    max_clips: int | None = Field(None, ge=1, description="use only the first N training clips")
    flow_cache: Path | None = Field(Path.home() / ".cache" / "amvad" / "flows",
                                    description="folder for cached flows; null disables the cache")


class ModelConfig(Strict):
    method: Literal["ammc", "amsrc", "comemory"]
    args: dict = Field(default_factory=dict, description="constructor arguments of the method")


class OptimConfig(Strict):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-4, gt=0)
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="learning rate over the epochs: constant, or annealed from lr to 0 along a "
        "cosine by the last step (the weights then settle instead of ending wherever the last steps left them); "
        "AMMC-Net's discriminator keeps disc_lr")
    weight_decay: float = Field(0.0, ge=0)
    stage1_epochs: int = Field(0, ge=0, description="AMMC-Net: epochs before AMFT and all losses")
    disc_lr: float = Field(2e-5, gt=0, description="discriminator learning rate (AMMC-Net)")
    grad_clip: float | None = Field(5.0, gt=0)
    time_budget_min: float | None = Field(None, gt=0, description="stop before an epoch that would end past "
                                          "this many minutes of training (epochs is then the most)")
    freeze_bn: bool = Field(False, description="keep batch-norm statistics fixed (fine-tuning on little data)")
    ema: float | None = Field(None, gt=0, lt=1, description="decay of a moving average of the weights after "
                              "every step; the finished model is the average (training.ema)")
    predictor_epochs: int = Field(0, ge=0, description="epochs after the others that train only the "
                                  "method's scoring predictor, on the rest of the model frozen in inference "
                                  "mode (AMSRC-Net's U-Net, whose frame error scores; the others have none)")
    predictor_lr: float | None = Field(None, gt=0, description="those epochs' learning rate, annealed to 0 "
                                       "along a cosine (default: lr)")

    @model_validator(mode="after")
    def _predictor_after_all(self) -> OptimConfig:
        if self.predictor_epochs and self.time_budget_min:
            raise ValueError("predictor_epochs follow all the epochs, which time_budget_min may cut short: "
                             "set one of them, not both")
        if self.schedule == "cosine" and self.time_budget_min:
            raise ValueError("schedule cosine anneals over all the epochs, which time_budget_min may cut "
                             "short: set one of them, not both")
        return self


class ScoreConfig(Strict):
    weights: list[float] | None = Field(None, description="component weights; default: the method's")
    speed_weight: float | None = Field(None, gt=0, description="weight of the runtime's motion_speed component "
                                       "(runtime/motion_speed.py) beside the graph's; None: the graph's alone")
    smoothing: int = Field(5, ge=1, description="causal moving-average window, frames")
    smoothing_drop: int = Field(0, ge=0, description="the window's highest frame scores left out of its mean "
                                                     "(runtime/scoring.py)")
    threshold_quantile: float = Field(0.99, gt=0, lt=1,
                                      description="default threshold = this quantile of training scores")
    calibrate_under: list[str] = Field(
        default_factory=list, description="benign changes of the robustness battery (training/perturbations.py) "
        "the threshold is also taken under: the normal footage is scored once more under each, every clip at a "
        "magnitude drawn from the change's sweep, and the threshold is the quantile of those scores and the "
        "clean ones together; the running statistics still learn only under the clean quantile "
        "(training.condition.benign_threshold). Empty: the clean footage alone")

    @model_validator(mode="after")
    def _drop_within_window(self) -> ScoreConfig:
        check_smoothing_drop(self.smoothing, self.smoothing_drop)
        return self

    @model_validator(mode="after")
    def _known_changes(self) -> ScoreConfig:
        from .perturbations import get_change  # cv2 and numpy: only when a recipe names changes
        for name in self.calibrate_under:
            get_change(name)
        return self


class ConditioningConfig(Strict):
    """Level matching and stabilisation (``amvad.runtime.conditioning``): fitted on the training footage,
    applied to it before its flows are taken, and stored in the model so serving does the same."""
    enabled: bool = True
    stabilise: bool = Field(True, description="align frames to the fitted view (undo shake and sway)")
    max_shift: float = Field(0.08, gt=0, lt=0.5, description="largest shift undone, fraction of the shorter side")
    sample_frames: int = Field(400, ge=10, description="frames (spread over the footage) the view is taken from")


class Augment(Strict):
    """One benign camera change learned as normal: every training clip is also trained on with it (after
    it, the conditioning; the flows are those of the changed frames), so sensor noise, compression and a
    soft focus are what the model expects rather than an anomaly. Level changes and shake need none:
    conditioning takes them out. Each one adds the training set's size again to an epoch."""
    change: Literal["noise", "jpeg", "h264", "blur"] = Field(
        description="noise: Gaussian σ (grey levels, 0-255); jpeg: quality (1-100); h264: the whole clip "
                    "through libx264 at this CRF (0-51), block and motion artefacts both; blur: Gaussian σ (px)")
    magnitude: float = Field(gt=0)
    at: Literal["model", "camera"] = Field(
        "model", description="model: applied to the frames at the model's size; camera: to the clip's frames as "
                             "decoded, before they are scaled down, as a camera's own encoder or sensor does (a "
                             "milder change at the same magnitude)")


class TrainConfig(Strict):
    seed: int = 0
    out_dir: Path = Path("runs/default")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = Field(True, description="bfloat16 autocast on CUDA (ignored on CPU)")
    threads: int | None = Field(None, ge=1, description="torch CPU threads")
    flow: dict = Field(default_factory=lambda: {"name": "default"},
                       description="models.flow.build_flow arguments (name, its parameters, span)")
    data: DataConfig
    model: ModelConfig
    optim: OptimConfig = OptimConfig()
    score: ScoreConfig = ScoreConfig()
    conditioning: ConditioningConfig = ConditioningConfig()
    augment: list[Augment] = Field(default_factory=list, description="changes learned as normal (training split)")


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read and validate a YAML config; errors name the file and the offending keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"config {path}: invalid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config {path}: expected a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"config {path}: {exc}") from None
