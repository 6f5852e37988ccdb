"""The self-description stored inside every exported ONNX file (``metadata_props["amvad"]``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

METADATA_KEY = "amvad"
FORMAT_VERSION = 1


def check_smoothing_drop(smoothing: int, drop: int) -> None:
    """A window keeps more than half its frames: leaving out more would score it by its quietest frames."""
    if not 0 <= drop <= (smoothing - 1) // 2:
        raise ValueError(f"smoothing_drop must be in [0, {(smoothing - 1) // 2}] for a window of {smoothing} "
                         f"frames, got {drop}")


class ComponentStats(BaseModel):
    """One score component, its weight in the final score and its training-set statistics."""
    model_config = ConfigDict(extra="forbid")
    name: str
    weight: float
    mean: float
    std: float = Field(gt=0)


class Conditioning(BaseModel):
    """How frames are conditioned before flow and model (``amvad.runtime.conditioning``): the training
    footage's level, and the view the model was fitted on."""
    model_config = ConfigDict(extra="forbid")

    brightness: float = Field(ge=0, le=1, description="mean grey level of the training frames")
    contrast: float = Field(gt=0, le=1, description="mean standard deviation of their grey level")
    stabilise: bool = Field(True, description="align each frame to the reference (shake, sway)")
    max_shift: float = Field(0.08, gt=0, lt=0.5, description="largest shift undone, as a fraction of the "
                                                             "frame's shorter side; beyond it the camera moved")
    reference: str = Field(description="the fitted view: grey PNG at the model's input size, base64")
    sharpness: float | None = Field(None, gt=0, description="mean edge energy of the training frames (the "
                                                            "measure of runtime.conditioning.sharpness)")
    noise: float | None = Field(None, gt=0, description="mean sensor noise of the level-matched training "
                                                        "frames, 0-1 grey (runtime.conditioning.noise_level)")
    min_sharpness: float | None = Field(None, gt=0, lt=1, description="sharpness (against the training "
                                        "frames') under which this model does not judge a picture: measured when "
                                        "the conditioning is fitted (training.condition.blur_tolerance); the camera "
                                        "watch holds softer frames as a defocused tamper. None: it judged every blur "
                                        "tried, the watch's own defocus_ratio holds")


SPEED_COMPONENT = "motion_speed"


class MotionSpeed(BaseModel):
    """The score component the runtime adds to the graph's own (``runtime.motion_speed``): the fastest patch's
    speed between frames ``gap`` apart, averaged over ``window`` frames. A model asks for it with this field
    and lists it, named :data:`SPEED_COMPONENT`, last among its ``components``."""
    model_config = ConfigDict(extra="forbid")
    gap: int = Field(3, ge=1, le=8, description="frames between the two frames of each flow")
    window: int = Field(8, ge=1, le=64, description="frames each patch's speed is averaged over")
    patch: int = Field(16, ge=4, le=128, description="side of a patch, pixels at the model's input size")


class CodedStart(BaseModel):
    """Where a stream whose picture is heavily coded (a low-bitrate sub-stream) starts its running
    statistics: those of the training footage coded that way, instead of the clean footage's. A fresh stream
    starts from the model's statistics; a coded picture raises every prediction and flow error (``ped2``'s
    flow error at H.264 CRF 42: 1.3-1.6x the mean, 8x the variance), so until it has learned its own it
    scores the codec as an anomaly. Chosen once, at a stream's start, by the blockiness of its first frames
    (``runtime.conditioning.blockiness``)."""
    model_config = ConfigDict(extra="forbid")
    min_blockiness: float = Field(gt=1, description="the median blockiness of a stream's first frames from which "
                                                    "it starts here")
    crf: float = Field(gt=0, description="the H.264 CRF the training footage was coded at")
    mean: list[float] = Field(description="each component's mean on that footage, in the model's order")
    std: list[float] = Field(description="each component's standard deviation on it")

    @model_validator(mode="after")
    def _positive_spread(self) -> CodedStart:
        if len(self.mean) != len(self.std) or any(v <= 0 for v in self.std):
            raise ValueError("coded_start: one mean and one positive std per component")
        return self


class ModelMetadata(BaseModel):
    """Everything serving needs to reproduce training-time inputs and scores."""
    model_config = ConfigDict(extra="forbid")
    format_version: int = FORMAT_VERSION
    method: str
    model_args: dict
    clip_len: int = Field(ge=3)
    channels: int = Field(ge=1, le=3)
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    value_range: tuple[float, float] = (0.0, 1.0)
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    flow: dict = Field(description="models.flow spec: build_flow(**flow) rebuilds the estimator")
    components: list[ComponentStats]
    threshold: float = Field(description="default anomaly threshold on the causal score")
    learn_threshold: float | None = Field(None, description="the running statistics learn only from frames "
                                          "scoring under this too: the clean normal footage's quantile, where the "
                                          "threshold was taken under benign changes as well (higher; "
                                          "training.condition.benign_threshold). None: the threshold")
    smoothing: int = Field(ge=1, description="causal moving-average window of the score, frames")
    smoothing_drop: int = Field(0, ge=0, description="the window's highest frame scores left out of its mean "
                                                     "(runtime.scoring)")
    training: dict = Field(default_factory=dict, description="data, epochs, time, machine, date")
    conditioning: Conditioning | None = Field(None, description="level matching and stabilisation; None: "
                                                                "exported before them, frames are only measured")
    speed: MotionSpeed | None = Field(None, description="the runtime's motion-speed component, the last of "
                                                        "components; None: the graph's components alone")
    coded_start: CodedStart | None = Field(None, description="the statistics a heavily coded stream starts from; "
                                                             "None: every stream starts from the training ones")

    @model_validator(mode="after")
    def _drop_within_window(self) -> ModelMetadata:
        check_smoothing_drop(self.smoothing, self.smoothing_drop)
        return self

    @model_validator(mode="after")
    def _speed_listed_last(self) -> ModelMetadata:
        named = [c.name == SPEED_COMPONENT for c in self.components]
        if self.speed is None and any(named):
            raise ValueError(f"component {SPEED_COMPONENT!r} is listed but speed is not set")
        if self.speed is not None and (not named or not named[-1] or sum(named) != 1):
            raise ValueError(f"speed is set: {SPEED_COMPONENT!r} must be the last component, once")
        if self.speed is not None and self.speed.gap >= self.clip_len:
            raise ValueError(f"speed.gap must be shorter than the window, clip_len {self.clip_len}; "
                             f"got {self.speed.gap}")
        if self.speed is not None and self.speed.patch > min(self.height, self.width):
            raise ValueError(f"speed.patch {self.speed.patch} is larger than the input {self.height}x{self.width}")
        return self

    @model_validator(mode="after")
    def _coded_start_per_component(self) -> ModelMetadata:
        if self.coded_start is not None and len(self.coded_start.mean) != len(self.components):
            raise ValueError(f"coded_start has {len(self.coded_start.mean)} components, the model "
                             f"{len(self.components)}")
        return self

    @property
    def graph_components(self) -> list[ComponentStats]:
        """The components the ONNX graph outputs (all but the runtime's speed)."""
        return self.components[:-1] if self.speed is not None else self.components

    def to_json(self) -> str:
        return self.model_dump_json()
