"""``amvad fit``: a model of one camera's normal from its footage, in one command.

Footage (video files, folders of videos, or folders of frame images, one folder = one clip; all normal)
-> the input size from its aspect ratio within the bundled model's cost (so it keeps real time) -> flows
with the serving flow -> as many training epochs as fit in the time budget, the last ``FIT_HOLDOUT`` of every
clip (by time) kept aside -> the threshold set on that held-out normal footage for a target false-alarm
rate -> a self-describing ONNX file and a model card (``PATH.md``) beside it.

:func:`run_fit` runs a :class:`~runtime.fit_job.FitSpec` (the fit-job contract) and records progress and
errors as :class:`~runtime.fit_job.FitProgress`; :func:`run_job` does so for a service's job folder.
"""

from __future__ import annotations

import json
import math
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from amvad.models.flow import build_flow
from amvad.models.registry import build_model
from amvad.runtime.calibration import FIT_HOLDOUT, check_fit_footage, events_per_hour, pick_threshold
from amvad.runtime.device import pick_device
from amvad.runtime.events import EventConfig
from amvad.runtime.exported_model import ExportedModel, read_metadata
from amvad.runtime.files import write_atomic
from amvad.runtime.fit_job import (
    DEFAULT_BASE_WIDTH,
    DEFAULT_MAX_PIXELS,
    INITS,
    FitSpec,
    JobFolder,
    ProgressWriter,
    read_request,
)
from amvad.runtime.flows import compute_flows
from amvad.runtime.motion_speed import clip_speed
from amvad.runtime.scoring import gop_starts, training_scores
from amvad.runtime.video import FRAME_EXTS, FRAME_FOLDER_FPS, VIDEO_EXTS, open_source, stream_fps
from amvad.runtime.windows import scored_frames, window

from .condition import TOLERANCE_FRAMES, benign_threshold, encodable, set_blur_limit, set_coded_start
from .config import (
    Augment,
    ConditioningConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    ScoreConfig,
    TrainConfig,
    load_config,
)
from .data import (
    ClipSource,
    augmented_clip,
    condition_clip,
    fit_footage_conditioning,
    iter_clip_frames,
    load_coded_clip,
)
from .export import export, rewrite_metadata
from .perturbations import WriterFactory
from .train import train
from .warm_start import weights_from_exported

BUDGET_PIXELS = DEFAULT_MAX_PIXELS   # the bundled model's input: what keeps >= 25 frames/s on 2 CPU cores
CLIP_LEN, BASE_WIDTH = 5, DEFAULT_BASE_WIDTH
BENIGN_FRAMES = 300  # held-out frames of each clip scored under each of the recipe's benign changes, at most
# each method's bundled model was trained by this recipe; fit takes its model arguments beyond the sizes and
# its score weights from it, so a camera's model of a method trains and scores as the bundled one does
RECIPES = {"comemory": "ped2_comemory_robust.yaml", "ammc": "ped2_ammc_robust.yaml", "amsrc": "ped2_amsrc_robust.yaml"}
SIZE_ARGS = ("clip_len", "channels", "height", "width", "base_width")


def bundled_recipe(method: str) -> tuple[dict, dict, ScoreConfig, tuple[Augment, ...]]:
    """(model arguments beyond the sizes, its flow, how it scores, the changes it learns as normal) of
    ``method``'s bundled recipe (``training/configs``): AMMC-Net's weights and window, AMSRC-Net's speed error
    against either flow and its weights, each measured on Ped2 (the model cards)."""
    cfg = load_config(Path(__file__).parent / "configs" / RECIPES[method])
    args = {k: v for k, v in cfg.model.args.items() if k not in SIZE_ARGS}
    return args, cfg.flow, cfg.score, tuple(cfg.augment)


@dataclass
class Clip:
    """One clip of footage, preprocessed: frames (N, C, H, W), flows (N-1, 2, H, W), its frame rate, and
    (footage as filmed) which frames were coded on their own, so its scores are a stream's."""
    name: str
    frames: np.ndarray
    flows: np.ndarray
    fps: float
    keyframes: np.ndarray | None = None


def find_footage(paths: list[str | Path]) -> list[ClipSource]:
    """Video files, folders of videos, and folders of frame images (one folder = one clip)."""
    found: list[ClipSource] = []
    for p in map(Path, paths):
        if p.is_file() and p.suffix.lower() in VIDEO_EXTS:
            found.append(ClipSource(p.stem, p))
        elif p.is_dir() and any(f.suffix.lower() in FRAME_EXTS for f in p.iterdir()):
            found.append(ClipSource(p.name, p))
        elif p.is_dir() and (videos := sorted(f for f in p.iterdir() if f.suffix.lower() in VIDEO_EXTS)):
            found += [ClipSource(v.stem, v) for v in videos]
        else:
            raise FileNotFoundError(f"{p}: not a video file ({', '.join(sorted(VIDEO_EXTS))}), a folder of videos "
                                    f"or a folder of frame images")
    names: dict[str, int] = {}
    unique = []
    for src in found:  # the same stem twice (cam1/a.mp4, cam2/a.mp4) gets a suffix
        names[src.name] = names.get(src.name, 0) + 1
        unique.append(src if names[src.name] == 1 else ClipSource(f"{src.name}-{names[src.name]}", src.path))
    return unique


def choose_size(width: int, height: int, budget: int = BUDGET_PIXELS) -> tuple[int, int]:
    """(height, width), multiples of 8, with the footage's aspect ratio and at most ``budget`` pixels."""
    aspect = width / height
    h = max(32, int(math.sqrt(budget / aspect)) // 8 * 8)
    w = max(32, round(h * aspect / 8) * 8)
    while h * w > budget and w > 32:
        w -= 8
    return h, w


def source_fps(src: ClipSource) -> float:
    if not src.is_video:
        return FRAME_FOLDER_FPS
    with open_source(str(src.path)) as container:
        return stream_fps(container)


def split_holdout(clip: Clip, holdout: float = FIT_HOLDOUT) -> tuple[Clip, Clip | None]:
    """(training part, held-out end) of a clip; a clip too short for both stays whole in training."""
    n = len(clip.frames)
    n_val = max(CLIP_LEN + 1, round(n * holdout))
    if n - n_val < CLIP_LEN:
        return clip, None
    cut = n - n_val
    key = (None, None) if clip.keyframes is None else (clip.keyframes[:cut], clip.keyframes[cut:])
    return (Clip(clip.name, clip.frames[:cut], clip.flows[:cut - 1], clip.fps, key[0]),
            Clip(clip.name, clip.frames[cut:], clip.flows[cut:], clip.fps, key[1]))


def holdout_scores(model: ExportedModel, clips: list[Clip]) -> list[np.ndarray]:
    """Causal scores of the held-out windows (training statistics, no running updates), per clip; the first
    frame of each group of pictures scored as a stream scores it."""
    meta = model.meta
    out = []
    for c in clips:
        ids = scored_frames(len(c.frames), meta.clip_len)
        wins = [window(c.frames, c.flows, i, meta.clip_len) for i in ids]
        comps = model.run(np.stack([w[0] for w in wins]), np.stack([w[1] for w in wins])).components
        if meta.speed is not None:  # the runtime's own component, last, as the engine adds it
            speed = clip_speed(torch.from_numpy(c.frames).to(model.device), model.flow, meta.speed)
            comps = np.concatenate([comps, speed[ids, None]], 1)
        carried = None if c.keyframes is None else gop_starts(c.keyframes)[ids]
        out.append(training_scores(meta.components, comps, meta.smoothing, carried, meta.smoothing_drop))
    return out


def set_threshold(path: Path, threshold: float, training: dict) -> None:
    """Rewrite the exported file's metadata with the chosen threshold and the fit's record."""
    old = read_metadata(path)
    rewrite_metadata(path, path, threshold=threshold, training={**old.training, **training})


def fit(footage: list[str | Path], out: str | Path, *, minutes: float = 30.0, method: str = "comemory",
        init: str = "none", false_alarms_per_hour: float = 1.0, threads: int | None = None, seed: int = 0,
        base_width: int = BASE_WIDTH, max_pixels: int = BUDGET_PIXELS, augment: bool = False, progress: bool = True,
        on_progress: Callable[[dict], None] | None = None, registered_as: str | None = None,
        writer: WriterFactory | None = None) -> dict:
    """Fit, export to ``out`` and write the model card ``out`` with ``.md``; returns the fit's report.
    ``registered_as``: the name the service registers the result under (the card then says so instead of
    telling the user to upload it). ``writer``: H.264 for the recipe's compression in the threshold's
    benign changes (``amvad fit`` passes the service's); without one compression is left out of them."""
    t_start = time.time()
    out = Path(out)
    report = on_progress or (lambda d: None)
    if init not in INITS:
        raise ValueError(f"--init must be one of {list(INITS)}, got {init!r}")
    if threads:
        torch.set_num_threads(threads)
    sources = find_footage(footage)
    first = next(iter_clip_frames(sources[0]))
    height, width = choose_size(first.pixels.shape[1], first.pixels.shape[0], max_pixels)
    recipe_args, recipe_flow, recipe_score, recipe_changes = bundled_recipe(method)
    args = dict(clip_len=CLIP_LEN, channels=1, height=height, width=width, base_width=base_width, **recipe_args)
    device = pick_device("auto")
    flow = build_flow(**recipe_flow).to(device).eval()
    changes = recipe_changes if augment else ()
    steps = len(sources) * (2 + len(changes))  # loading: read, then condition + flow each version
    raw, keyframes = [], []
    for i, src in enumerate(tqdm(sources, desc="footage", disable=not progress)):
        report({"stage": "loading", "fraction": i / steps})
        frames, key = load_coded_clip(src, height=height, width=width, channels=1)
        raw.append(frames)
        keyframes.append(key)
    # the footage's level and view, taken out of every frame before its flow, as serving will
    conditioning = fit_footage_conditioning(raw, ConditioningConfig())
    clips = []
    for i, (src, frames, key) in enumerate(zip(tqdm(sources, desc="conditioning + flow", disable=not progress), raw,
                                                keyframes)):
        report({"stage": "loading", "fraction": (len(sources) + i) / steps})
        frames = condition_clip(frames, conditioning)
        clips.append(Clip(src.name, frames, compute_flows(flow, frames, device), source_fps(src), key))
    parts = [split_holdout(c) for c in clips]
    train_clips, val_clips = [p[0] for p in parts], [p[1] for p in parts if p[1] is not None]
    n_train = sum(len(c.frames) for c in train_clips)
    # the training part of every clip again with each change learned as normal (the held-out end stays as
    # filmed: the threshold is set on the camera's own picture)
    copies = [(aug, src, raw_frames, part) for aug in changes
              for src, raw_frames, part in zip(sources, raw, train_clips)]
    for n, (aug, src, raw_frames, part) in enumerate(tqdm(copies, desc="changes learned as normal", disable=not progress)):
        report({"stage": "loading", "fraction": (2 * len(sources) + n) / steps})
        frames = condition_clip(augmented_clip(src, raw_frames[:len(part.frames)], aug, seed=seed * 100_003 + n),
                                conditioning)
        train_clips.append(Clip(f"{part.name} + {aug.change} {aug.magnitude:g}", frames,
                                compute_flows(flow, frames, device), part.fps))
    del raw
    check_fit_footage(sum(len(c.frames) for c in clips) if val_clips else 0, clips[0].fps)
    model = build_model(method, **args)
    init_state = weights_from_exported(model, init) if init != "none" else None
    with tempfile.TemporaryDirectory(prefix="amvad-fit-") as work:
        cfg = TrainConfig(seed=seed, out_dir=Path(work), threads=threads, flow=recipe_flow,
                          data=DataConfig(root=Path(work), stride=1, flow_cache=None),
                          model=ModelConfig(method=method, args=args),
                          optim=OptimConfig(epochs=100_000, batch_size=8, lr=5e-4, time_budget_min=minutes,
                                            freeze_bn=init_state is not None),
                          score=recipe_score)
        bar = tqdm(total=round(minutes * 60), unit="s", desc="training", disable=not progress,
                   bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}] {postfix}")

        def on_batch(p: dict) -> None:
            bar.n = min(bar.total, round(p["train_seconds"]))
            bar.set_postfix_str(f"epoch {p['epoch']}, loss {p['loss']:.4f}", refresh=True)
            report({"stage": "training", "fraction": min(1.0, p["train_seconds"] / (minutes * 60)), **p})

        ckpt_path = train(cfg, progress=False, clips=([c.name for c in train_clips],
                                                      [(c.frames, c.flows) for c in train_clips]),
                          conditioning=conditioning, init_state=init_state, on_progress=on_batch)
        bar.close()
        report({"stage": "exporting", "fraction": 1.0})
        meta = export(ckpt_path, out)
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    exported = ExportedModel(out, device=torch.device("cpu"))
    scores = holdout_scores(exported, val_clips)
    fps = [c.fps for c in val_clips]
    events = EventConfig()
    floor, benign = meta.threshold, encodable(recipe_score.calibrate_under, writer)
    limit = None
    if benign:  # the recipe's benign changes on the held-out footage too, as the bundled model's threshold
        # (the blur limit first, at the clean threshold: a picture too soft to judge is held under them too)
        limit = set_blur_limit(out, sources, progress=progress).conditioning.min_sharpness
        footage = ((src.name, list(islice(iter_clip_frames(src), len(cut.frames), len(cut.frames) + BENIGN_FRAMES)))
                   for src, (cut, held) in zip(sources, parts) if held is not None)
        floor = benign_threshold(out, footage, len(val_clips), benign, scores, recipe_score.threshold_quantile,
                                 floor=meta.threshold, writer=writer, progress=progress).threshold
    threshold = pick_threshold(scores, fps, false_alarms_per_hour, floor=floor, events=events)
    val_frames = sum(len(s) for s in scores)
    result = {
        "model": str(out), "method": method, "init": init, "height": height, "width": width, "base_width": base_width,
        "footage": [str(s.path.resolve()) for s in sources], "clips": len(clips), "frames": sum(len(c.frames) for c in clips),
        "train_frames": n_train, "validation_frames": val_frames,
        "augment": [f"{a.change} {a.magnitude:g}" for a in changes],
        "validation_seconds": round(sum(len(c.frames) / c.fps for c in val_clips), 1),
        "epochs": ckpt["epoch"], "train_seconds": round(ckpt["train_seconds"], 1),
        "threshold": threshold, "training_quantile_threshold": meta.threshold,
        "training_quantile": recipe_score.threshold_quantile, "calibrated_under": benign,
        "benign_threshold": floor,
        "target_false_alarms_per_hour": false_alarms_per_hour,
        "validation_false_alarms_per_hour": round(events_per_hour(scores, fps, threshold, events), 3),
        "flow": exported.flow.spec, "smoothing": meta.smoothing,
        "smoothing_drop": meta.smoothing_drop, "seconds": round(time.time() - t_start, 1),
        "machine": f"{platform.node()} {platform.machine()}, {torch.get_num_threads()} threads, {device}",
        "date": date.today().isoformat(),
    }
    set_threshold(out, threshold, {"fit": {k: result[k] for k in ("footage", "init", "epochs", "train_frames", "augment",
                                                                  "validation_frames", "target_false_alarms_per_hour",
                                                                  "validation_false_alarms_per_hour",
                                                                  "training_quantile_threshold",
                                                                  "calibrated_under", "benign_threshold")}})
    # how soft a picture the model still judges, on the footage blurred (a softer one is a defocused tamper)
    result["min_sharpness"] = limit if benign else set_blur_limit(out, sources, progress=progress).conditioning.min_sharpness
    if writer is not None:  # where a stream of this camera's low-bitrate sub-stream starts (metadata.CodedStart)
        start = set_coded_start(out, sources, writer, max_frames=TOLERANCE_FRAMES, progress=progress).coded_start
        result["coded_start"] = None if start is None else start.model_dump(exclude={"mean", "std"})
    write_atomic(out.with_suffix(".md"), model_card(result, registered_as))
    report({"stage": "done", "fraction": 1.0, "result": result})
    return result


def run_fit(spec: FitSpec, *, progress_file: Path | None = None, progress: bool = True,
            h264: WriterFactory | None = None) -> dict:
    """:func:`fit` as ``spec`` asks; with ``progress_file`` its progress, and its error if it fails (then
    re-raised), are kept there as :class:`~runtime.fit_job.FitProgress` records; ``h264``: :func:`fit`'s
    ``writer``."""
    writer = ProgressWriter(progress_file) if progress_file else None
    try:
        return fit(**spec.model_dump(), progress=progress, on_progress=writer, writer=h264)
    except (Exception, KeyboardInterrupt) as exc:
        if writer is not None:
            writer.fail(exc)
        raise


def run_job(folder: str | Path, h264: WriterFactory | None = None) -> dict:
    """Run the fit a job folder's ``request.json`` asks for (``amvad fit --job DIR``, the service's worker),
    keeping its ``progress.json``; a request that cannot be read is recorded there as the error too."""
    job = JobFolder(Path(folder))
    try:
        spec = read_request(job.root)
    except (OSError, ValueError) as exc:
        if job.root.is_dir():
            ProgressWriter(job.progress).fail(exc)
        raise
    return run_fit(spec, progress_file=job.progress, progress=False, h264=h264)


def next_steps(name: str | None) -> str:
    """The card's last paragraph: an ``amvad fit`` file still has to be registered; a fit job's model is
    registered by the service itself (it adds the version it became)."""
    if name is None:
        return ("Register it (`curl -F file=@<file>.onnx 'http://127.0.0.1:8000/v1/models?name=<name>'`), assign it "
                "to a camera (`PATCH /v1/cameras/<id> {\"model\": \"<name>\"}`) and, once the camera runs, calibrate "
                "its threshold on live normal footage (`POST /v1/cameras/<id>/calibrate`).")
    return (f"The service registers it as `{name}` when the fit succeeds (a new version if `{name}` exists; cameras "
            f"on `{name}` then run it); nothing to upload. Assign it to a camera (`PATCH /v1/cameras/<id> "
            f"{{\"model\": \"{name}\"}}`) and, once the camera runs, calibrate its threshold on live normal footage "
            f"(`POST /v1/cameras/<id>/calibrate`).")


def _dropped(drop: int | None) -> str:
    return f" less the {drop} highest" if drop else ""


def _changes(augment: list[str] | None) -> str:
    if not augment:
        return "the footage as filmed only (no `--augment`)"
    return f"the footage as filmed, and its training part again with each of: {', '.join(augment)} (the method's recipe, training/configs)"


def _soft(limit: float | None) -> str:
    if limit is None:
        return "judged down to the camera watch's own defocus rule (it flagged no blur tried, up to sigma 3 px)"
    return (f"not judged under {limit:g} of the footage's sharpness: such frames are held as a `defocused` "
            f"tamper (the model flagged its footage blurred; training/condition.py blur_tolerance)")


def _benign(r: dict) -> str:
    """The card's word on the threshold's benign changes (fit results from before have none)."""
    if not r.get("calibrated_under"):
        return ""
    return (f"; with the held-out footage under {', '.join(r['calibrated_under'])} too: "
            f"{r['benign_threshold']:.3f}")


def model_card(r: dict, registered_as: str | None = None) -> str:
    """The model card written beside the exported file; ``registered_as``: see :func:`next_steps`."""
    footage = "\n".join(f"- `{f}`" for f in r["footage"])
    return f"""# {Path(r['model']).stem}: {r['method']} model fitted with `amvad fit` ({r['date']})

| | |
|---|---|
| footage | {r['clips']} clip(s), {r['frames']} frames: {r['train_frames']} for training, \
{r['validation_frames']} scored for the threshold ({r['validation_seconds']} s held out, the end of each clip) |
| input | {r['height']}x{r['width']} grey, clip length {CLIP_LEN}, base width {r['base_width']} |
| start | {'the bundled ' + r['init'] + ' weights (batch-norm statistics kept fixed)' if r['init'] != 'none' else 'random weights'} |
| training | {r['epochs']} epochs in {r['train_seconds']} s ({r['machine']}) |
| learned as normal | {_changes(r.get('augment'))} |
| flow | `{json.dumps(r['flow'])}` (the serving flow) |
| score | causal, smoothing {r['smoothing']} frames{_dropped(r.get('smoothing_drop'))}; \
threshold {r['threshold']:.3f} (training {r.get('training_quantile', 0.99) * 100:g}th percentile \
{r['training_quantile_threshold']:.3f}{_benign(r)}) |
| false alarms | target {r['target_false_alarms_per_hour']:g}/h; on the held-out footage \
{r['validation_false_alarms_per_hour']:g}/h |
| soft pictures | {_soft(r.get('min_sharpness'))} |

Footage:
{footage}

{next_steps(registered_as)}
"""
