"""What the camera changed, taken out of each frame before flow and model see it.

A real camera flickers, changes exposure, gets lit and darkened, and shakes on its pole; none of that is
something happening in the scene. Two corrections, both near-identity on the footage a model was trained
on, so they need no retraining and training, evaluation and serving compute the same thing:

- **Level matching**: each frame's mean grey level and standard deviation are mapped (one gain and offset
  for all channels) to those of the training footage, so a global brightness or contrast change (lights,
  clouds, auto-exposure, flicker) does not look like motion to the flow or like a new appearance to the
  model.
- **Stabilisation**: the view is aligned to the one the model was fitted on (phase correlation of the frame
  against the model's reference image, translation only) and the shift undone, so shake and slow sway are
  not motion. A shift beyond ``max_shift`` of the frame is not corrected: the camera was moved.

The parameters travel in the model's metadata (:class:`amvad.models.metadata.Conditioning`); a model
without them (exported before) is only measured. Each frame's measurements (:class:`FrameCondition`) let
the camera watch tell a changed or tampered camera from an anomaly in the scene.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import cv2
import numpy as np

from amvad.models.metadata import Conditioning

from .types import FrameCondition

MIN_CONTRAST = 0.01   # below this a frame is flat (lens covered): its level is not stretched further
MAX_GAIN = 4.0        # the most a frame's contrast is stretched (or squeezed, 1/MAX_GAIN)
MIN_SHIFT = 0.25      # pixels: a still camera measures < 0.1 on Ped2; undoing less would only blur
MIN_RESPONSE = 0.05   # phase-correlation peak below this (a still view: ~0.19): no alignment to trust


def grey(x: np.ndarray) -> np.ndarray:
    """(C, H, W) float -> (H, W) float32: the mean over channels (the level one gain applies to)."""
    return x[0] if x.shape[0] == 1 else x.mean(axis=0, dtype=np.float32)


def match_level(x: np.ndarray, mean: float, std: float, brightness: float, contrast: float) -> np.ndarray:
    """``x`` (float, [0, 1]) with its grey ``mean``/``std`` mapped to ``brightness``/``contrast``."""
    gain = float(np.clip(contrast / max(std, MIN_CONTRAST), 1 / MAX_GAIN, MAX_GAIN))
    return np.clip(x * gain + (brightness - mean * gain), 0.0, 1.0, dtype=np.float32)


def sharpness(g: np.ndarray) -> float:
    """Energy of the Laplacian of a grey image at half size: falls when the picture is defocused, sprayed
    or fogged; at half size it sees edges rather than sensor noise or a sub-pixel resampling."""
    return float(cv2.Laplacian(cv2.pyrDown(g), cv2.CV_32F, ksize=3).var())


class PhaseCorrelation:
    """Translation of a grey image against a fixed reference: the peak of the inverse FFT of their
    normalised cross-power spectrum, refined to sub-pixel by a parabola through it and its neighbours.
    (Written here rather than taken from OpenCV: ``cv2.phaseCorrelate`` of OpenCV 5.0 gave a different
    shift on each call with the same images.)"""

    def __init__(self, reference: np.ndarray) -> None:
        h, w = reference.shape
        self.window = cv2.createHanningWindow((w, h), cv2.CV_32F)
        self.reference = np.conj(np.fft.rfft2((reference - reference.mean()) * self.window))

    def __call__(self, g: np.ndarray) -> tuple[float, float, float]:
        """(dx, dy, peak): ``g`` shows the reference moved by (dx, dy) pixels; peak in [0, 1]."""
        cross = np.fft.rfft2((g - g.mean()) * self.window) * self.reference
        r = np.fft.irfft2(cross / (np.abs(cross) + 1e-9), s=g.shape)
        h, w = r.shape
        py, px = np.unravel_index(int(np.argmax(r)), r.shape)
        dy = py + _vertex(r[(py - 1) % h, px], r[py, px], r[(py + 1) % h, px])
        dx = px + _vertex(r[py, (px - 1) % w], r[py, px], r[py, (px + 1) % w])
        return (dx - w if dx > w / 2 else dx), (dy - h if dy > h / 2 else dy), float(r[py, px])


def _vertex(left: float, mid: float, right: float) -> float:
    """Offset of the peak of the parabola through three samples from the middle one."""
    curve = left - 2 * mid + right
    return 0.0 if curve >= 0 else float(np.clip(0.5 * (left - right) / curve, -0.5, 0.5))


def encode_reference(image: np.ndarray) -> str:
    """A grey reference (H, W) in [0, 1] as base64 PNG, for the model's metadata."""
    ok, png = cv2.imencode(".png", np.clip(np.rint(image * 255), 0, 255).astype(np.uint8))
    if not ok:
        raise ValueError("could not encode the reference image")
    return base64.b64encode(png.tobytes()).decode("ascii")


def decode_reference(text: str, height: int, width: int) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(text), np.uint8)
    image = cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE)
    if image is None or image.shape != (height, width):
        raise ValueError(f"the model's reference image is not a {height}x{width} grey PNG")
    return image.astype(np.float32) / 255.0


def fit_conditioning(frames: np.ndarray, *, max_shift: float = 0.08, stabilise: bool = True) -> Conditioning:
    """The conditioning of a model trained on ``frames`` (N, C, H, W) in [0, 1], a sample of its training
    footage: the mean level and contrast, and the fitted view (per-pixel median of the level-matched
    frames: people and cars pass, the view stays)."""
    greys = np.stack([grey(f) for f in frames])
    means, stds = greys.mean(axis=(1, 2)), greys.std(axis=(1, 2))
    brightness, contrast = float(means.mean()), float(stds.mean())
    matched = [match_level(g, m, s, brightness, contrast) for g, m, s in zip(greys, means, stds)]
    reference = np.median(np.stack(matched), axis=0).astype(np.float32)
    return Conditioning(brightness=brightness, contrast=contrast, stabilise=stabilise, max_shift=max_shift,
                        reference=encode_reference(reference))


@dataclass
class Conditioner:
    """Conditions the frames of one model's input size (stateless per frame: safe to share by streams)."""
    spec: Conditioning | None
    height: int
    width: int

    def __post_init__(self) -> None:
        self._align: PhaseCorrelation | None = None
        self.reference_sharpness = 0.0
        if self.spec is not None:
            reference = decode_reference(self.spec.reference, self.height, self.width)
            self._align = PhaseCorrelation(reference)
            self.reference_sharpness = max(sharpness(reference), 1e-9)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, FrameCondition]:
        """A model frame (C, H, W) float32 in [0, 1] -> (the conditioned frame, what was measured)."""
        g = grey(x)
        mean, std = float(g.mean()), float(g.std())
        if self.spec is None:
            return x, FrameCondition(brightness=mean, contrast=std)
        s = self.spec
        x = match_level(x, mean, std, s.brightness, s.contrast)
        g = grey(x)
        dx, dy, peak = self._align(g)
        limit = s.max_shift * min(self.height, self.width)
        compensate = (s.stabilise and peak >= MIN_RESPONSE and max(abs(dx), abs(dy)) >= MIN_SHIFT
                      and np.hypot(dx, dy) <= limit)
        if compensate:
            x = self._shift(x, -dx, -dy)
        return x, FrameCondition(brightness=mean, contrast=std, sharpness=sharpness(g) / self.reference_sharpness,
                                 shift=(float(dx), float(dy)), alignment=peak, compensated=bool(compensate))

    def _shift(self, x: np.ndarray, dx: float, dy: float) -> np.ndarray:
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        hwc = np.ascontiguousarray(x.transpose(1, 2, 0))
        out = cv2.warpAffine(hwc, m, (self.width, self.height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        return (out[None] if out.ndim == 2 else out.transpose(2, 0, 1)).astype(np.float32, copy=False)
