"""The one model contract shared by training, export and serving.

Every method is an :class:`AnomalyModel`. Training calls ``forward`` and ``losses``; export and serving
only ever see ``score``, traced into ONNX with the input and output names below, so the service never
branches on the method.

Inputs (all float32):
    frames: (B, T, C, H, W) in [0, 1]; frames t-T+1 .. t, the last one is the frame being scored.
    flows:  (B, T-1, 2, H, W) optical flow in pixels between consecutive frames (x then y, OpenCV's
            convention ``prev(y, x) ~ next(y + v, x + u)``), computed with the model's flow settings.
    mask:   (B, 1, H, W) in [0, 1]: 1 where a pixel counts, 0 where it is masked out (an on-screen clock,
            a road, a tree). Masked pixels never contribute to the components or the heatmap: every
            reduction inside the graph weighs the per-pixel errors by the mask. All ones = no mask.
Outputs:
    components: (B, K) raw score components, each oriented so that higher = more anomalous.
    heatmap:    (B, 1, H, W) non-negative per-pixel error (appearance and motion errors, summed), 0 where masked.
    prediction: (B, C, H, W) the predicted frame t in [0, 1].
"""

from __future__ import annotations

import abc
import functools
import inspect
from typing import ClassVar

import torch
from torch import nn

from .flow import build_flow, check_flow_work
from .metadata import ModelMetadata

INPUT_NAMES = ("frames", "flows", "mask")
OUTPUT_NAMES = ("components", "heatmap", "prediction")

# Default scale that maps flow in pixels at model resolution to roughly [-1, 1] inside the networks.
FLOW_SCALE = 4.0

# Bounds on what sets the work per frame (an exported model's metadata carries these, so a file cannot ask
# the shared engine for an absurd amount): generous for the bundled models (5 frames of 128x192 grey,
# smoothing 5, 2-3 components) and for `amvad fit` (at most 1024*1024 pixels); the flow's own settings are
# bounded in models/flow. What the graph itself costs is measured at load (runtime/engine.py's budget).
BOUNDS = {
    "clip_len": 32,           # frames per window (each a model input)
    "channels": 3,
    "height": 4096,           # pixels, one side of the model input
    "width": 4096,
    "pixels": 1024 * 1024,    # height x width
    "smoothing": 1000,        # frames averaged per score
    "components": 32,         # score components per frame
}


def _over(field: str, value: int, minimum: int = 1) -> str | None:
    if not minimum <= value <= BOUNDS[field]:
        return f"{field} = {value} is outside the bounds [{minimum}, {BOUNDS[field]}]"
    return None


def check_input_size(*, clip_len: int, channels: int, height: int, width: int) -> None:
    """Raise a ValueError naming the field, its value and the bound when the model input is out of
    :data:`BOUNDS` (or its sides are not multiples of 8, or the clip is shorter than 3 frames)."""
    problems = [_over("clip_len", clip_len, 3), _over("channels", channels), _over("height", height, 8),
                _over("width", width, 8), _over("pixels", height * width, 64)]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError("; ".join(problems))
    if height % 8 or width % 8:
        raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")


def check_metadata(meta: ModelMetadata) -> None:
    """Everything in an exported model's metadata that sets the work per frame, within bounds: the input
    (:func:`check_input_size`), smoothing, the number of components and the flow settings (each parameter,
    and the total per frame pair at the input size). ValueError names the field, its value and the bound."""
    check_input_size(clip_len=meta.clip_len, channels=meta.channels, height=meta.height, width=meta.width)
    problems = [p for p in (_over("smoothing", meta.smoothing), _over("components", len(meta.components))) if p]
    if problems:
        raise ValueError("; ".join(problems))
    try:
        check_flow_work(build_flow(**meta.flow), meta.height, meta.width)
    except (TypeError, ValueError) as exc:  # TypeError: a spec without a name, or with a bad keyword
        raise ValueError(f"flow: {exc}") from None


def to_signed(x: torch.Tensor) -> torch.Tensor:
    """Map [0, 1] pixels to the [-1, 1] range the networks work in."""
    return x * 2.0 - 1.0


def shrink_mask(mask: torch.Tensor | None, stride: int) -> torch.Tensor | None:
    """The mask at the resolution of a feature map ``stride`` times smaller: the share of each cell's
    pixels that count. ``stride`` is a Python int, so the exported graph holds a fixed pooling kernel."""
    return None if mask is None else nn.functional.avg_pool2d(mask, stride)


def patch_max(error: torch.Tensor, patch: int) -> torch.Tensor:
    """Mean error of the worst ``patch``x``patch`` window (stride patch/2) per sample: (B, 1, H, W) -> (B,)."""
    stride = max(1, patch // 2)
    pooled = nn.functional.avg_pool2d(error, patch, stride=stride)
    return pooled.flatten(1).amax(1)


class AnomalyModel(nn.Module, abc.ABC):
    """Base class of all methods. Subclasses keep every learned or updated state (memory items
    included) as parameters or buffers, so a state dict is the whole model, and take keyword-only
    constructor arguments, which are recorded (defaults filled in) for :meth:`model_args`."""

    method: ClassVar[str] = ""
    component_names: ClassVar[tuple[str, ...]] = ()
    # Weights of the components in the final score (service: z-scored sum; eval: min-max per clip).
    default_weights: ClassVar[tuple[float, ...]] = ()
    # Constructor arguments that change only how a trained network scores (no weight, no training step):
    # an exported model can be written again with another value (``amvad export --onnx M --score-arg``).
    score_args: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs) -> None:
        """Wrap each method's ``__init__`` so the arguments it was called with are kept: the one way every
        model records what rebuilds it (checkpoints and ONNX metadata store them)."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            init(self, *args, **kw)
            if type(self) is cls:  # the outermost constructor records, not a parent's
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                # tuples kept as lists: the record is what JSON (checkpoints, ONNX metadata) gives back
                self._model_args = {k: list(v) if isinstance(v, tuple) else v
                                    for k, v in bound.arguments.items() if k != "self"}

        cls.__init__ = recording_init

    def __init__(self, *, clip_len: int, channels: int, height: int, width: int,
                 flow_scale: float = FLOW_SCALE) -> None:
        super().__init__()
        check_input_size(clip_len=clip_len, channels=channels, height=height, width=width)
        self.clip_len = clip_len
        self.channels = channels
        self.height = height
        self.width = width
        self.flow_scale = flow_scale

    # -- training -----------------------------------------------------------------------------
    @abc.abstractmethod
    def forward(self, frames: torch.Tensor, flows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Method-specific named outputs used by ``losses`` and ``score``."""

    @abc.abstractmethod
    def losses(self, out: dict[str, torch.Tensor], frames: torch.Tensor,
               flows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms; training minimises their sum."""

    def predictor(self) -> nn.Module | None:
        """The part that renders the scored prediction, if it learns on detached inputs and so can train on
        alone after the rest (``optim.predictor_epochs``); None for methods whose prediction shapes their
        features."""
        return None

    def predictor_losses(self, frames: torch.Tensor, flows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The :meth:`predictor`'s loss terms, its inputs computed without gradient. Training calls it with
        the model in eval mode and the predictor in train mode."""
        raise NotImplementedError(f"{self.method} has no predictor that trains alone")

    # -- export / serving ---------------------------------------------------------------------
    @abc.abstractmethod
    def score(self, frames: torch.Tensor, flows: torch.Tensor, mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(components, heatmap, prediction) as described in the module docstring; ``mask`` None counts
        every pixel."""

    def adopt_export(self, weight_names: set[str]) -> set[str]:
        """Set what an export's weights do not hold but its graph shows (``weight_names``: its stored
        weights, ``model.``-prefixed), so a model rebuilt from the export scores through the same modules;
        returns the state-dict keys so set. Nothing for methods whose scoring path is fixed."""
        return set()

    def check_mask(self, frames: torch.Tensor, mask: torch.Tensor | None) -> None:
        want = (frames.shape[0], 1, self.height, self.width)
        if mask is not None and (mask.dim() != 4 or tuple(mask.shape[1:]) != want[1:] or mask.shape[0] != want[0]):
            raise ValueError(f"mask must have shape {want}, got {tuple(mask.shape)}")

    def check_inputs(self, frames: torch.Tensor, flows: torch.Tensor) -> None:
        """Raise a ValueError naming the shape when inputs do not follow the contract."""
        want_f = (self.clip_len, self.channels, self.height, self.width)
        want_o = (self.clip_len - 1, 2, self.height, self.width)
        if frames.dim() != 5 or tuple(frames.shape[1:]) != want_f:
            raise ValueError(f"frames must have shape (B, {', '.join(map(str, want_f))}), "
                             f"got {tuple(frames.shape)}")
        if flows.dim() != 5 or tuple(flows.shape[1:]) != want_o or flows.shape[0] != frames.shape[0]:
            raise ValueError(f"flows must have shape (B, {', '.join(map(str, want_o))}), "
                             f"got {tuple(flows.shape)}")

    def split(self, frames: torch.Tensor, flows: torch.Tensor) -> dict[str, torch.Tensor]:
        """The common views of a clip, in the networks' value ranges.

        past: (B, (T-1)*C, H, W) frames 1..t-1 stacked on channels; target: (B, C, H, W) frame t;
        last: (B, C, H, W) frame t-1; past_flows: (B, (T-2)*2, H, W) flows among the past frames;
        last_flow: (B, 2, H, W) flow from frame t-2 to t-1 (the newest past flow); target_flow: (B, 2, H, W)
        flow from frame t-1 to t. All scaled to about [-1, 1].
        """
        b = frames.shape[0]
        f = to_signed(frames)
        o = flows / self.flow_scale
        return {
            "past": f[:, :-1].reshape(b, -1, self.height, self.width),
            "target": f[:, -1],
            "last": f[:, -2],
            "past_flows": o[:, :-1].reshape(b, -1, self.height, self.width),
            "last_flow": o[:, -2],
            "target_flow": o[:, -1],
        }

    def model_args(self) -> dict:
        """Keyword arguments that rebuild this module (saved in checkpoints and ONNX metadata)."""
        return dict(self._model_args)
