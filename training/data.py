"""Datasets: frame folders (``<root>/<split>/frames/<clip>/*.jpg``) or video files
(``<root>/<split>/*.mp4``), preprocessed like serving does, with a flow cache on disk."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import av
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from amvad.models.metadata import Conditioning
from amvad.runtime.conditioning import Conditioner, fit_conditioning
from amvad.runtime.files import atomic_path
from amvad.runtime.flows import compute_flows
from amvad.runtime.preprocess import to_model_frame
from amvad.runtime.types import Frame
from amvad.runtime.video import FRAME_EXTS, FRAME_FOLDER_FPS, VIDEO_EXTS, iter_frames, open_source
from amvad.runtime.windows import scored_frames, window

from .config import Augment, ConditioningConfig


@dataclass(frozen=True)
class ClipSource:
    """One clip on disk: a folder of frame images or a video file."""
    name: str
    path: Path

    @property
    def is_video(self) -> bool:
        return self.path.is_file()


def find_clips(root: str | Path, split: str) -> list[ClipSource]:
    """The clips of a split, sorted by name; a clear error when the layout is not recognised."""
    base = Path(root) / split
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: missing; expected {base}/frames/<clip>/*.jpg or {base}/*.mp4")
    frames_dir = base / "frames"
    if frames_dir.is_dir():
        clips = [ClipSource(d.name, d) for d in sorted(frames_dir.iterdir()) if d.is_dir()]
    else:
        clips = [ClipSource(f.stem, f) for f in sorted(base.iterdir()) if f.suffix.lower() in VIDEO_EXTS]
    if not clips:
        raise FileNotFoundError(f"{base}: no clips (no sub-folders of {frames_dir}, no video files)")
    return clips


def _frame_files(folder: Path) -> list[Path]:
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in FRAME_EXTS)
    if not files:
        raise FileNotFoundError(f"{folder}: no frame images ({', '.join(sorted(FRAME_EXTS))})")
    return files


def iter_clip_frames(src: ClipSource) -> Iterator[Frame]:
    """The clip's decoded frames in order, as the service sees frames (RGB uint8 :class:`Frame` records;
    a video through the service's PyAV decoder)."""
    if src.is_video:
        with open_source(str(src.path)) as container:
            yield from iter_frames(container, source_id=src.name)
        return
    for i, f in enumerate(_frame_files(src.path)):
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{f}: unreadable image")
        yield Frame(src.name, i, 0, i / FRAME_FOLDER_FPS, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def load_clip(src: ClipSource, *, height: int, width: int, channels: int) -> np.ndarray:
    """All frames of a clip, preprocessed: (N, C, H, W) float32 in [0, 1]."""
    return load_coded_clip(src, height=height, width=width, channels=channels)[0]


def load_coded_clip(src: ClipSource, *, height: int, width: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`load_clip`, and which frames were coded on their own ((N,) bool, ``Frame.keyframe``)."""
    out, keyframes = [], []
    for f in iter_clip_frames(src):
        out.append(to_model_frame(f.pixels, height=height, width=width, channels=channels))
        keyframes.append(f.keyframe)
    if not out:
        raise ValueError(f"{src.path}: no decodable frames")
    return np.stack(out), np.array(keyframes, bool)


def fit_footage_conditioning(clips: list[np.ndarray], cfg: ConditioningConfig) -> Conditioning:
    """The conditioning of this footage ((N, C, H, W) clips in [0, 1]): its level and its view, from
    ``cfg.sample_frames`` frames spread evenly over all clips."""
    total = sum(len(c) for c in clips)
    step = max(1, total // cfg.sample_frames)
    sample = [frame for c in clips for frame in c[::step]]
    return fit_conditioning(np.stack(sample), stabilise=cfg.stabilise, max_shift=cfg.max_shift)


def split_conditioning(root: str | Path, split: str, *, height: int, width: int, channels: int,
                       cfg: ConditioningConfig | None = None) -> Conditioning:
    """The conditioning of a dataset split at a model's input size (``amvad export --condition-on``)."""
    clips = [load_clip(src, height=height, width=width, channels=channels) for src in find_clips(root, split)]
    return fit_footage_conditioning(clips, cfg or ConditioningConfig())


def condition_clip(frames: np.ndarray, conditioning: Conditioning) -> np.ndarray:
    """Every frame of a clip conditioned as :class:`~amvad.runtime.stream.Stream` conditions it."""
    conditioner = Conditioner(conditioning, frames.shape[2], frames.shape[3])
    return np.stack([conditioner(f)[0] for f in frames])


def h264_round_trip(frames: np.ndarray, crf: int, fps: float = FRAME_FOLDER_FPS) -> np.ndarray:
    """Frames ((N, C, H, W) in [0, 1], C = 1 or 3, even H and W) encoded as one H.264 stream at
    ``crf`` and decoded again, in memory, one keyframe a second as the service's writer codes (a camera's
    stream has one every 1-2 s). One encoder thread, so the same frames give the same result."""
    grey = frames.shape[1] == 1
    buf = io.BytesIO()
    with av.open(buf, "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[3], frames.shape[2], "yuv420p"
        stream.options = {"crf": str(int(crf)), "preset": "veryfast", "threads": "1"}
        for i, f in enumerate(frames):
            rgb = np.rint(f.transpose(1, 2, 0) * 255).astype(np.uint8)
            rgb = np.repeat(rgb, 3, axis=2) if grey else rgb
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            if i % max(1, round(fps)) == 0:
                vf.pict_type = av.video.frame.PictureType.I
            out.mux(stream.encode(vf))
        out.mux(stream.encode())
    with av.open(io.BytesIO(buf.getvalue()), format="h264") as inp:
        decoded = [f.to_ndarray(format="gray" if grey else "rgb24") for f in inp.decode(video=0)]
    if len(decoded) != len(frames):
        raise ValueError(f"H.264 at crf {crf}: {len(decoded)} frames decoded of {len(frames)} written")
    out_frames = np.stack(decoded).astype(np.float32) / 255
    return out_frames[:, None] if grey else out_frames.transpose(0, 3, 1, 2)


def augmented_clip(src: ClipSource, frames: np.ndarray, aug: Augment, seed: int) -> np.ndarray:
    """The model frames ``frames`` ((N, C, H, W) in [0, 1]) of clip ``src`` (its first N) with ``aug`` applied
    where ``aug.at`` says: at the model's size, or to the clip's decoded frames before they are scaled down
    (read again from ``src``; for H.264 an odd side loses its last row or column, as an encoder's frame does)."""
    if aug.at == "model":
        return augmented(frames, aug, seed)
    n, c, h, w = frames.shape
    even = 2 if aug.change == "h264" else 1
    source = np.stack([f.pixels[: f.pixels.shape[0] // even * even, : f.pixels.shape[1] // even * even]
                       for f in islice(iter_clip_frames(src), n)]).transpose(0, 3, 1, 2).astype(np.float32) / 255
    changed = np.rint(augmented(source, aug, seed) * 255).astype(np.uint8)
    return np.stack([to_model_frame(np.ascontiguousarray(f.transpose(1, 2, 0)), height=h, width=w, channels=c)
                     for f in changed])


def augmented(frames: np.ndarray, aug: Augment, seed: int) -> np.ndarray:
    """Frames ((N, C, H, W) in [0, 1]) with ``aug`` applied at their size, seeded. H.264 at the model's size
    is harsher than at the camera's: CRF 35 at 192 x 128 leaves Ped2 about as far from the original (PSNR
    30.8 dB) as CRF 42 at the camera's 360 x 240 does once scaled down."""
    if aug.change == "noise":
        rng = np.random.default_rng(seed)
        return np.clip(frames + rng.normal(0, aug.magnitude / 255, frames.shape), 0, 1).astype(np.float32)
    if aug.change == "h264":
        return h264_round_trip(frames, int(aug.magnitude))
    out = np.empty_like(frames)
    for i, f in enumerate(frames):
        hwc = np.ascontiguousarray(f.transpose(1, 2, 0))
        if aug.change == "blur":
            g = cv2.GaussianBlur(hwc, (0, 0), aug.magnitude)
        else:
            ok, jpg = cv2.imencode(".jpg", np.rint(hwc * 255).astype(np.uint8),
                                   [cv2.IMWRITE_JPEG_QUALITY, int(aug.magnitude)])
            if not ok:
                raise ValueError(f"could not JPEG-encode a frame at quality {aug.magnitude:g}")
            g = cv2.imdecode(jpg, cv2.IMREAD_UNCHANGED).astype(np.float32) / 255
        out[i] = g.reshape(f.shape[1], f.shape[2], -1).transpose(2, 0, 1)
    return out


def labels_file(root: str | Path, split: str) -> Path:
    """Where a split's frame labels are (1 = anomalous): the folder ``<root>/<split>/labels`` with one
    ``<clip>.npy`` per clip, or one ``<root>/frame_labels_*.npy`` with all clips concatenated in order (the
    Ped2 layout). Raises FileNotFoundError when there are none, so callers can check before long work."""
    root = Path(root)
    per_clip = root / split / "labels"
    if per_clip.is_dir():
        return per_clip
    found = sorted(root.glob("frame_labels_*.npy"))
    if not found:
        raise FileNotFoundError(f"{root}: no labels (expected {per_clip}/<clip>.npy or "
                                f"{root}/frame_labels_<name>.npy)")
    return found[0]


def load_labels(root: str | Path, split: str, clips: list[ClipSource], lengths: list[int]) -> list[np.ndarray]:
    """Frame labels per clip (see :func:`labels_file`), checked against the clips' frame counts."""
    source = labels_file(root, split)
    if source.is_dir():
        labels = [np.load(source / f"{c.name}.npy").reshape(-1) for c in clips]
    else:
        flat = np.load(source).reshape(-1)
        if len(flat) != sum(lengths):
            raise ValueError(f"{source}: {len(flat)} labels for {sum(lengths)} frames in {Path(root) / split}")
        labels = np.split(flat, np.cumsum(lengths)[:-1])
    for c, lab, n in zip(clips, labels, lengths):
        if len(lab) != n:
            raise ValueError(f"labels of clip {c.name}: {len(lab)} values for {n} frames")
    return [lab.astype(np.int64) for lab in labels]


def cached_flows(src: ClipSource, frames: np.ndarray, flow: torch.nn.Module, spec: dict,
                 device: torch.device, cache_dir: Path | None) -> np.ndarray:
    """Flows of a clip computed once with the given flow settings and kept on disk."""
    if cache_dir is None:
        return compute_flows(flow, frames, device)
    stat = src.path.stat()
    key = json.dumps({"flow": spec, "path": str(src.path.resolve()), "mtime": stat.st_mtime,
                      "shape": list(frames.shape), "sum": float(frames.sum())}, sort_keys=True)
    file = Path(cache_dir) / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"
    if file.is_file():
        return np.load(file)
    flows = compute_flows(flow, frames, device)
    with atomic_path(file) as tmp, tmp.open("wb") as fh:
        np.save(fh, flows)
    return flows


class ClipDataset(Dataset):
    """Windows of ``clip_len`` frames with explicit ids: item i is (frames, flows) ending at frame
    ``index[i] = (clip, frame_id)``."""

    def __init__(self, clips: list[tuple[np.ndarray, np.ndarray]], clip_len: int, stride: int = 1,
                 names: list[str] | None = None) -> None:
        self.clips = clips
        self.clip_len = clip_len
        self.index: list[tuple[int, int]] = []
        for c, (frames, _) in enumerate(clips):
            name = f"clip {names[c] if names else c}"
            self.index += [(c, fid) for fid in scored_frames(len(frames), clip_len, stride, name=name)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        c, fid = self.index[i]
        frames, flows = window(*self.clips[c], fid, self.clip_len)
        return torch.from_numpy(frames), torch.from_numpy(flows)
