"""What the camera changed, taken out of each frame before flow and model see it.

A real camera flickers, changes exposure, gets lit and darkened, and shakes on its pole; none of that is
something happening in the scene. Two corrections, both near-identity on the footage a model was trained
on, so they need no retraining and training, evaluation and serving compute the same thing:

- **Level matching**: each frame's mean grey level and contrast (the standard deviation of the frame shrunk
  8x, which a gain moves but blur and noise do not) are mapped, one gain and offset for all channels, to
  those of the training footage, so a global brightness or contrast change (lights, clouds, auto-exposure,
  flicker) does not look like motion to the flow or like a new appearance to the model. A dark frame
  brought up by more than 1.5x is smoothed as much as it is stretched, or its sensor noise would be too.
- **Stabilisation**: the view is aligned to the one the model was fitted on (phase correlation of the frame
  against the model's reference image, translation only) and the shift undone (all but a still camera's
  sub-pixel wobble: :func:`still_factor`), so shake and slow sway are not motion; the strip the shift
  uncovers is left out of the model's errors. A shift beyond ``max_shift`` of the frame is not corrected:
  the camera was moved.

The parameters travel in the model's metadata (:class:`amvad.models.metadata.Conditioning`); a model
without them (exported before) is only measured. Each frame's measurements (:class:`FrameCondition`) let
the camera watch tell a changed or tampered camera from an anomaly in the scene; among them the sensor
noise after level matching against the training footage's, since a picture many times noisier (a dark
scene at high gain) is too poor to judge and is better told as such than scored.
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
NOISY_GAIN = 1.5      # a frame stretched more than this was dark: its sensor noise is smoothed as it is stretched
LEVEL_SCALE = 8       # contrast is measured on the frame shrunk this much: blur and noise barely move it
MIN_UNCOVERED = 1.0   # a strip a shift uncovers is left out of the errors from this width (px) on
MIN_RESPONSE = 0.1    # phase-correlation peak below this is not trusted (Ped2: 0.2-0.25 still, blurred, dark)
STILL_SHIFT = 0.25    # px: shifts well under this are the estimate's own wobble (people passing drag it), not shake


def grey(x: np.ndarray) -> np.ndarray:
    """(C, H, W) float -> (H, W) float32: the mean over channels (the level one gain applies to)."""
    return x[0] if x.shape[0] == 1 else x.mean(axis=0, dtype=np.float32)


def level(g: np.ndarray) -> tuple[float, float]:
    """(mean, contrast) of a grey image; contrast is the standard deviation of the image shrunk
    ``LEVEL_SCALE`` times, so a gain or an offset moves it but defocus and sensor noise (fine detail) do not."""
    h, w = g.shape
    small = cv2.resize(g, (max(1, w // LEVEL_SCALE), max(1, h // LEVEL_SCALE)), interpolation=cv2.INTER_AREA)
    return float(g.mean()), float(small.std())


def gain_of(contrast: float, target: float) -> float:
    return float(np.clip(target / max(contrast, MIN_CONTRAST), 1 / MAX_GAIN, MAX_GAIN))


def match_level(x: np.ndarray, mean: float, contrast: float, brightness: float, target: float) -> np.ndarray:
    """``x`` (float, [0, 1]) with its grey ``mean``/``contrast`` (see :func:`level`) mapped to
    ``brightness``/``target``."""
    gain = gain_of(contrast, target)
    return np.clip(x * gain + (brightness - mean * gain), 0.0, 1.0, dtype=np.float32)


def sharpness(g: np.ndarray) -> float:
    """Energy of the Laplacian of a grey image at half size: falls when the picture is defocused, sprayed
    or fogged; at half size it sees edges rather than sensor noise or a sub-pixel resampling."""
    return float(cv2.Laplacian(cv2.pyrDown(g), cv2.CV_32F, ksize=3).var())


_NOISE_MASK = np.float32([[1, -2, 1], [-2, 4, -2], [1, -2, 1]])


def noise_level(g: np.ndarray) -> float:
    """Standard deviation of the sensor noise of a grey image (0-1 scale): the mean absolute response to a
    mask that cancels smooth image structure, sigma = sqrt(pi / 2) / 6 * mean |g * N| (Immerkær, "Fast
    noise variance estimation", 1996). Fine texture reads as a little noise, as it does on the training
    frames this is compared with."""
    r = cv2.filter2D(g, cv2.CV_32F, _NOISE_MASK)[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) / 6 * np.abs(r).mean())


class PhaseCorrelation:
    """Translation of a grey image against a fixed reference: the peak of the inverse FFT of their
    normalised cross-power spectrum, refined to sub-pixel by a parabola through the logarithm of it and its
    neighbours (a Gaussian peak). The spectrum is weighted towards low frequencies (``band``, cycles per
    pixel), which smooths the peak into that Gaussian shape and leaves out pixel noise: on Ped2 frames moved
    by up to 3 px the shift comes out within 0.04 px rms (0.13 unweighted with a plain parabola).
    (Written here rather than taken from OpenCV: ``cv2.phaseCorrelate`` of OpenCV 5.0 gave a different
    shift on each call with the same images.)"""

    def __init__(self, reference: np.ndarray, band: float = 0.15) -> None:
        h, w = reference.shape
        self.window = cv2.createHanningWindow((w, h), cv2.CV_32F)
        fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
        self.weight = np.exp(-(fx ** 2 + fy ** 2) / (2 * band ** 2))
        self.perfect = float(np.fft.irfft2(self.weight, s=(h, w))[0, 0])  # the peak of an exact match
        self.reference = np.conj(np.fft.rfft2((reference - reference.mean()) * self.window))

    def __call__(self, g: np.ndarray) -> tuple[float, float, float]:
        """(dx, dy, peak): ``g`` shows the reference moved by (dx, dy) pixels; peak in [0, 1]: 1 the same
        picture, 0.2-0.25 a Ped2 frame against the median view (people walk, the sensor is noisy), lower
        for a view that no longer matches."""
        cross = np.fft.rfft2((g - g.mean()) * self.window) * self.reference
        r = np.fft.irfft2(cross / (np.abs(cross) + 1e-12) * self.weight, s=g.shape) / self.perfect
        h, w = r.shape
        py, px = np.unravel_index(int(np.argmax(r)), r.shape)
        dy = py + _vertex(*(np.log(max(v, 1e-6)) for v in (r[(py - 1) % h, px], r[py, px], r[(py + 1) % h, px])))
        dx = px + _vertex(*(np.log(max(v, 1e-6)) for v in (r[py, (px - 1) % w], r[py, px], r[py, (px + 1) % w])))
        return (dx - w if dx > w / 2 else dx), (dy - h if dy > h / 2 else dy), float(r[py, px])


def still_factor(dx: float, dy: float) -> float:
    """The share of a measured shift that is undone: 1 - exp(-(r / STILL_SHIFT)^2) for a shift of r px, so
    a still camera's sub-pixel estimates (0.05-0.1 px on Ped2, biased by the people walking through it) are
    left alone while a shake is undone all but fully (0.98 at 0.5 px, 1 - 1e-7 at 1 px), with no step in
    between for a camera near an edge to switch across."""
    return float(-np.expm1(-(dx * dx + dy * dy) / STILL_SHIFT ** 2))


def _vertex(left: float, mid: float, right: float) -> float:
    """Offset of the peak of the parabola through three samples from the middle one."""
    curve = left - 2 * mid + right
    return 0.0 if curve >= 0 else float(np.clip(0.5 * (left - right) / curve, -0.5, 0.5))


GREY_CHROMA = 0.01  # a mean chroma below this is a grey picture: infrared, or a grey camera (colour scenes: 0.03-0.15)


def colourfulness(image: np.ndarray) -> float:
    """Mean chroma of an RGB uint8 frame (0-1; grey or infrared pictures read ~0), measured on the frame
    shrunk ``LEVEL_SCALE`` times: a colour camera that switched to infrared for the night shows it here."""
    if image.ndim == 2:
        return 0.0
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, w // LEVEL_SCALE), max(1, h // LEVEL_SCALE)),
                       interpolation=cv2.INTER_AREA).astype(np.float32)
    r, g, b = small[..., 0], small[..., 1], small[..., 2]
    return float((np.abs(r - g) + np.abs(g - b) + np.abs(b - r)).mean() / (3 * 255))


CODEC_BLOCK = 16  # px: H.264's macroblock, the grid a low bitrate leaves its steps on


def blockiness(image: np.ndarray) -> float:
    """How coded a decoded frame looks: the mean grey step across the codec's macroblock grid (every
    ``CODEC_BLOCK`` px from the frame's corner, where a decoder puts it) over the mean step elsewhere,
    horizontal and vertical averaged. Measured on the frame as decoded, before any resize. 1 for a picture
    without a grid; blur, noise and shake stay near 1 (Ped2, 360x240: 0.96-1.15), while each step of
    coarser coding raises it (Ped2 as distributed 1.15-1.22, H.264 CRF 35 1.23-1.44, CRF 42 1.60-1.81)."""
    g = image.astype(np.float32) if image.ndim == 2 else image.astype(np.float32).mean(axis=2)
    ratios = []
    for steps in (np.abs(np.diff(g, axis=1)).mean(0), np.abs(np.diff(g, axis=0)).mean(1)):
        on_grid = np.arange(len(steps)) % CODEC_BLOCK == CODEC_BLOCK - 1  # between pixel 16k-1 and 16k
        if not on_grid.any():
            return 1.0
        ratios.append(steps[on_grid].mean() / max(float(steps[~on_grid].mean()), 1e-6))
    return float(np.mean(ratios))


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
    greys = [grey(f) for f in frames]
    levels = np.array([level(g) for g in greys])
    brightness, contrast = (float(v) for v in levels.mean(axis=0))
    matched = [match_level(g, m, c, brightness, contrast) for g, (m, c) in zip(greys, levels)]
    reference = np.median(np.stack(matched), axis=0).astype(np.float32)
    return Conditioning(brightness=brightness, contrast=contrast, stabilise=stabilise, max_shift=max_shift,
                        reference=encode_reference(reference),
                        sharpness=max(float(np.mean([sharpness(m) for m in matched])), 1e-9),
                        noise=max(float(np.mean([noise_level(m) for m in matched])), 1e-6))


def _strip(shift: float) -> int:
    """Columns (or rows) a shift of the content by ``shift`` px leaves to the edge fill, with the one more
    the bicubic kernel reaches; 0 under ``MIN_UNCOVERED`` px, where the repeated edge is a copy of the edge's
    own picture. Measured with the default model on Ped2 (``amvad robustness``, shake ±3 source px, about
    ±1.6 at the model's size): masking from 2 px let a person at the edge of a shaken normal clip raise an
    event (1 in 4.1 min, auc_stream 0.948); from 1 px none (0.944), and from 0.5 px none (0.944)."""
    return 0 if abs(shift) < MIN_UNCOVERED else int(np.ceil(abs(shift))) + 1


def uncovered(dx: float, dy: float, height: int, width: int) -> np.ndarray | None:
    """Where a frame's content moved by (dx, dy) has no picture of its own: (1, H, W) float32, 0 on the
    strips filled from the edge, 1 elsewhere; None when nothing is. Those pixels are left out of the
    model's errors (its ``mask`` input): a repeated edge is not the scene, and a worst-patch score would
    otherwise find it (measured: a 10 px sway flagged 7-28 % of normal frames, the error at the frame's
    edges 3-4x that of its inside)."""
    wx, wy = min(_strip(dx), width), min(_strip(dy), height)
    if not wx and not wy:
        return None
    valid = np.ones((1, height, width), np.float32)
    if wx:
        valid[:, :, slice(0, wx) if dx > 0 else slice(width - wx, width)] = 0
    if wy:
        valid[:, slice(0, wy) if dy > 0 else slice(height - wy, height), :] = 0
    return valid


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
            # the footage's own sharpness: the median view is smoother than any one frame (Ped2: 2x)
            self.reference_sharpness = self.spec.sharpness or max(sharpness(reference), 1e-9)

    def __call__(self, x: np.ndarray, colour: float | None = None) -> tuple[np.ndarray, FrameCondition]:
        """A model frame (C, H, W) float32 in [0, 1] -> (the conditioned frame, what was measured);
        ``colour``: the source frame's :func:`colourfulness`, passed through to the measurements."""
        mean, contrast = level(grey(x))
        if self.spec is None:
            return x, FrameCondition(brightness=mean, contrast=contrast, colour=colour)
        s = self.spec
        x = match_level(x, mean, contrast, s.brightness, s.contrast)
        g = grey(x)  # before any smoothing below
        sharp = sharpness(g) / self.reference_sharpness
        noise = noise_level(g) / s.noise if s.noise else None
        gain = gain_of(contrast, s.contrast)
        if gain > NOISY_GAIN:  # a dark frame brought up: its noise would come up with it
            sigma = min(0.5 * (gain - 1), 1.5)
            x = np.stack([cv2.GaussianBlur(c, (0, 0), sigma) for c in x])
        g = grey(x)
        dx, dy, peak = self._align(g)
        limit = s.max_shift * min(self.height, self.width)
        # every trusted shift is undone but for its still part (still_factor), with no hard dead zone: one
        # would switch a camera that sits near its edge between moved and not moved from frame to frame
        # (measured: ±1 px shake flagged 1.8 % of normal frames with a 0.25 px hard dead zone)
        compensate = s.stabilise and peak >= MIN_RESPONSE and np.hypot(dx, dy) <= limit
        if compensate:
            f = still_factor(dx, dy)
            x = self._shift(x, -dx * f, -dy * f)
        return x, FrameCondition(brightness=mean, contrast=contrast, sharpness=sharp,
                                 shift=(float(dx), float(dy)), alignment=peak, compensated=bool(compensate),
                                 colour=colour, noise=noise)

    def _shift(self, x: np.ndarray, dx: float, dy: float) -> np.ndarray:
        """``x`` moved by (dx, dy), the strip moving in from outside repeated from the edge (filling it
        from the fitted view instead flagged 6.6 % of shaken normal frames on Ped2, repeating it 0 %); a
        strip of ``MIN_UNCOVERED`` px or more is then left out of the errors (:func:`uncovered`)."""
        m = np.float32([[1, 0, dx], [0, 1, dy]])
        hwc = np.ascontiguousarray(x.transpose(1, 2, 0))
        out = cv2.warpAffine(hwc, m, (self.width, self.height), flags=cv2.INTER_CUBIC,
                             borderMode=cv2.BORDER_REPLICATE)
        return (out[None] if out.ndim == 2 else out.transpose(2, 0, 1)).astype(np.float32, copy=False)
