"""A camera's view for camera-event tests: a textured, still scene with people-like squares walking
through (phase correlation and sharpness need texture, as a real view has), and what happens to a real
camera: its lens covered or blinded, its picture blurred, its view shifted, its lights switched on."""

from __future__ import annotations

import cv2
import numpy as np

from amvad.runtime.types import Frame
from amvad.training.perturbations import low_light

SCENE_SIZE = (96, 144)  # (H, W) of the frames on disk; the tiny models see them at 32x48


def scene(n: int, *, seed: int = 3) -> list[np.ndarray]:
    """``n`` grey uint8 frames of one still view (its background fixed by ``seed``), two squares walking."""
    rng = np.random.default_rng(seed)
    h, w = SCENE_SIZE
    background = cv2.GaussianBlur(rng.uniform(0, 255, (h // 6, w // 6)).astype(np.float32), (0, 0), 0.8)
    background = cv2.resize(background, (w, h), interpolation=cv2.INTER_CUBIC)
    background = 40 + 170 * (background - background.min()) / np.ptp(background)
    frames = []
    for i in range(n):
        img = background.copy()
        for k in range(2):
            x = int(10 + 20 * k + 1.5 * i) % (w - 10)
            img[30 + 30 * k:42 + 30 * k, x:x + 8] = 230 - 180 * k
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def covered(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A hand or a cap over the lens: dark, nearly flat, a little sensor noise."""
    return np.clip(rng.normal(10, 2, img.shape), 0, 255).astype(np.uint8)


def blinded(img: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """A torch into the lens: the picture washes out to near white."""
    return np.clip(img.astype(np.float32) * 0.1 + 235, 0, 255).astype(np.uint8)


def blurred(img: np.ndarray, sigma: float = 6.0) -> np.ndarray:
    """Sprayed, fogged or the focus turned: a hard Gaussian blur (sigma in the frame's pixels)."""
    return cv2.GaussianBlur(img, (0, 0), sigma)


def dark_and_noisy(img: np.ndarray, i: int, level: float) -> np.ndarray:
    """Dusk or a badly lit corner: the battery's ``low_light`` (brightness x ``level`` and the gain noise
    that comes with it), frame ``i``."""
    return low_light(level, 1)(i, img)


def shifted(img: np.ndarray, fraction: float = 0.2) -> np.ndarray:
    """The camera turned: the view moved sideways by ``fraction`` of the frame's width (edges mirrored)."""
    h, w = img.shape[:2]
    return cv2.warpAffine(img, np.float32([[1, 0, round(w * fraction)], [0, 1, 0]]), (w, h),
                          borderMode=cv2.BORDER_REFLECT)


def lit(img: np.ndarray, gain: float = 1.35) -> np.ndarray:
    """Lights switched on (gain > 1) or off: every grey level times ``gain``."""
    return np.clip(img.astype(np.float32) * gain, 0, 255).astype(np.uint8)


def sample_walkway(n: int = 60) -> list[np.ndarray]:
    """The first ``n`` RGB frames of the bundled Ped2 sample (normal: the cyclist enters at frame 61)."""
    from amvad.runtime.video import iter_frames, open_source
    from amvad.service.config import SAMPLES_DIR
    with open_source(str(SAMPLES_DIR / "ped2_test01.mp4")) as container:
        return [f.pixels for _, f in zip(range(n), iter_frames(container, source_id="sample"))]


def there_and_back(frames: list[np.ndarray]) -> list[np.ndarray]:
    """``frames`` forward then backward (0..n-1, n-2..1): twice the normal footage, and a loop of it has no
    cut (the last frame leads back to the first one's neighbour)."""
    return frames + frames[-2:0:-1]


def on_rgb(change, rgb: np.ndarray, *args) -> np.ndarray:
    """A grey ``change`` (as above) applied to an RGB frame."""
    grey = change(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), *args)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)


def write_rgb_mp4(path, frames: list[np.ndarray], fps: int = 10):
    """RGB uint8 frames -> H.264 MP4 (yuv420p) with PyAV."""
    import av
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())
    return path


def write_rgb_folder(folder, frames: list[np.ndarray]) -> None:
    """RGB frames as 000.jpg, 001.jpg, ... (what the test RTSP server loops over)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))


def textured(seed: int = 0, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A grey scene (H, W) in [0, 1] with structure at several scales, like a street seen from a pole."""
    rng = np.random.default_rng(seed)
    h, w = size
    fine = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.5)
    coarse = cv2.resize(rng.random((h // 8, w // 8)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    img = 0.5 * fine + 0.5 * coarse
    return ((img - img.min()) / (img.max() - img.min()) * 0.7 + 0.15).astype(np.float32)


def moved(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def camera_view(n: int = 6, seed: int = 0) -> list[Frame]:
    """``n`` RGB frames of a textured scene at a camera's size (240x320) drifting slowly: large enough to show
    a codec's 16 px grid (runtime.conditioning.blockiness), which the tiny test views are not."""
    img = cv2.resize(textured(seed), (320, 240), interpolation=cv2.INTER_CUBIC)
    grey = [(np.clip(moved(img, 0.7 * i, 0.3 * i), 0, 1) * 255).astype(np.uint8) for i in range(n)]
    return [Frame("cam", i, 1, i / 10, cv2.cvtColor(g, cv2.COLOR_GRAY2RGB)) for i, g in enumerate(grey)]
