"""``amvad train``: fit one method on normal clips, with checkpoints that carry their config and
resume, then compute the score statistics of the training data (:func:`score_stats`: each component's
mean and std, the default threshold) and store them in the checkpoint."""

from __future__ import annotations

import contextlib
import math
import platform
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from amvad.models.contract import AnomalyModel
from amvad.models.discriminator import PatchDiscriminator
from amvad.models.flow import build_flow
from amvad.models.metadata import SPEED_COMPONENT, ComponentStats, Conditioning, MotionSpeed
from amvad.models.registry import build_model
from amvad.runtime.device import pick_device
from amvad.runtime.files import atomic_path
from amvad.runtime.motion_speed import clip_speed
from amvad.runtime.scoring import training_scores

from .config import Augment, TrainConfig
from .data import (
    ClipDataset,
    augmented_clip,
    cached_flows,
    condition_clip,
    find_clips,
    fit_footage_conditioning,
    load_clip,
)
from .ema import WeightAverage

CHECKPOINT = "last.pt"


def load_split(cfg: TrainConfig, model: AnomalyModel, split: str, device: torch.device,
               progress: bool = True, max_clips: int | None = None, condition: bool | Conditioning = False,
               augment: list[Augment] | None = None
               ) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]], Conditioning | None]:
    """Preprocessed frames and cached flows of every clip of a split (and of its ``augment`` copies), and
    the conditioning they went through: none (``condition=False``), the given one, or (``True``) one
    fitted on the unchanged frames."""
    flow = build_flow(**cfg.flow).to(device).eval()
    sources = find_clips(cfg.data.root, split)[:max_clips]
    frames = [load_clip(src, height=model.height, width=model.width, channels=model.channels)
              for src in tqdm(sources, desc=f"loading {split}", disable=not progress)]
    conditioning = fit_footage_conditioning(frames, cfg.conditioning) if condition is True else condition or None
    names, clips = [], []
    versions = [(None, src, f) for src, f in zip(sources, frames)]
    versions += [(aug, src, f) for aug in augment or [] for src, f in zip(sources, frames)]
    for n, (aug, src, f) in enumerate(tqdm(versions, desc=f"{split}: conditioning + flow", disable=not progress)):
        if aug is not None:
            f = augmented_clip(src, f, aug, seed=cfg.seed * 100_003 + n)
        if conditioning is not None:
            f = condition_clip(f, conditioning)
        with torch.no_grad():
            flows = cached_flows(src, f, flow, flow.spec, device, cfg.data.flow_cache)
        names.append(src.name if aug is None else f"{src.name} + {aug.change} {aug.magnitude:g}")
        clips.append((f, flows))
    return names, clips, conditioning


def save_checkpoint(obj: dict, path: Path) -> None:
    """Atomically, so an interrupted save never replaces a good checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def clip_components(model: AnomalyModel, ds: ClipDataset, device: torch.device,
                    batch: int = 16) -> list[np.ndarray]:
    """Raw score components of every window, grouped per clip in frame order."""
    model.eval()
    loader = DataLoader(ds, batch_size=batch, shuffle=False)
    rows = torch.cat([model.score(f.to(device), o.to(device))[0].float().cpu() for f, o in loader])
    clip_ids = np.array([c for c, _ in ds.index])
    return [rows.numpy()[clip_ids == c] for c in range(len(ds.clips))]


def speed_components(ds: ClipDataset, flow_spec: dict, spec: MotionSpeed, device: torch.device) -> list[np.ndarray]:
    """The runtime's motion_speed component (:mod:`runtime.motion_speed`) of every window, (N, 1) per clip in
    the order of :func:`clip_components`: what the engine adds beside the graph's."""
    flow = build_flow(**flow_spec).to(device).eval()
    clip_ids = np.array([c for c, _ in ds.index])
    frame_ids = np.array([f for _, f in ds.index])
    return [clip_speed(torch.from_numpy(frames).to(device), flow, spec)[frame_ids[clip_ids == c], None]
            for c, (frames, _) in enumerate(ds.clips)]


def score_stats(model: AnomalyModel, per_clip: list[np.ndarray], cfg: TrainConfig) -> dict:
    """:func:`statistics` of a model being trained, with the config's weights, window and quantile (and the
    speed component last, its column in ``per_clip``, when the config weighs it)."""
    names = list(model.component_names)
    weights = checked_weights(names, cfg.score.weights or list(model.default_weights), "score.weights")
    return statistics(names, weights, per_clip, cfg.score.smoothing, cfg.score.threshold_quantile,
                      cfg.score.smoothing_drop, cfg.score.speed_weight)


def checked_weights(names: list[str], weights: list[float], what: str) -> list[float]:
    """``weights`` if they can weight ``names`` (one each, non-negative, not all 0); ``what`` names their
    source in the error (a config key, a command-line option)."""
    if len(weights) != len(names) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"{what} needs {len(names)} non-negative values, not all 0, for {list(names)}; "
                         f"got {weights}")
    return weights


def statistics(names: list[str], weights: list[float], per_clip: list[np.ndarray], smoothing: int,
               quantile: float, drop: int = 0, speed_weight: float | None = None) -> dict:
    """Statistics of each component over normal clips' components ((N, K) per clip) and the default
    threshold: the ``quantile`` of the causal scores (no running updates, so the threshold does not chase
    itself). The metadata fields ``components``, ``smoothing``, ``smoothing_drop`` and ``threshold``. With
    ``speed_weight`` the runtime's speed component is the clips' last column, listed last with that weight
    (as :class:`~models.metadata.ModelMetadata` wants it)."""
    if speed_weight:
        names, weights = [*names, SPEED_COMPONENT], [*weights, speed_weight]
    allc = np.concatenate(per_clip)
    comps = [ComponentStats(name=n, weight=w, mean=float(m), std=max(float(s), 1e-6))
             for n, w, m, s in zip(names, weights, allc.mean(0), allc.std(0))]
    scores = np.concatenate([training_scores(comps, c, smoothing, drop=drop) for c in per_clip])
    return {"components": [c.model_dump() for c in comps], "smoothing": smoothing, "smoothing_drop": drop,
            "threshold": float(np.quantile(scores, quantile))}


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True,
          clips: tuple[list[str], list[tuple[np.ndarray, np.ndarray]]] | None = None,
          conditioning: Conditioning | None = None,
          init_state: dict | None = None, on_progress: Callable[[dict], None] | None = None) -> Path:
    """Train, save ``<out_dir>/last.pt`` after every epoch, add the training-set score statistics, and
    return the checkpoint path.

    ``clips`` (names, [(frames, flows)]) replaces the config's training split (``amvad fit`` passes its
    footage, already conditioned by ``conditioning``; else the split is loaded and, unless
    ``cfg.conditioning.enabled`` is off, conditioned); ``init_state`` is a state dict to start from (fine-tuning); ``on_progress`` gets a dict after
    every batch. With ``optim.time_budget_min`` training stops before an epoch that would not fit."""
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    model = build_model(cfg.model.method, **cfg.model.args).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
    head = model.predictor() if cfg.optim.predictor_epochs else None
    if cfg.optim.predictor_epochs and head is None:
        raise ValueError(f"optim.predictor_epochs: {cfg.model.method} has no predictor that trains alone "
                         f"(only amsrc has); leave it at 0")
    total_epochs = cfg.optim.epochs + cfg.optim.predictor_epochs
    if clips is None:
        names, clips, conditioning = load_split(cfg, model, cfg.data.train_split, device, progress,
                                                cfg.data.max_clips, condition=cfg.conditioning.enabled,
                                                augment=cfg.augment)
    else:
        names, clips = clips
    ds = ClipDataset(clips, model.clip_len, cfg.data.stride, names)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(ds, batch_size=cfg.optim.batch_size, shuffle=True, generator=gen,
                        drop_last=len(ds) > cfg.optim.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    adv_weight = float(getattr(model, "adversarial_weight", 0.0))
    disc = PatchDiscriminator(channels=model.channels).to(device) if adv_weight > 0 else None
    disc_opt = torch.optim.Adam(disc.parameters(), lr=cfg.optim.disc_lr) if disc else None

    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT
    start_epoch, elapsed, saved_ema, saved_head = 0, 0.0, None, None
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt["method"] != cfg.model.method or not _same_model_args(ckpt, model):
            raise ValueError(f"{ckpt_path}: checkpoint is for a different model; refusing to resume")
        model.load_state_dict(ckpt.get("train_model") or ckpt["model"])
        saved_ema, saved_head = ckpt.get("ema"), ckpt.get("predictor_optimizer")
        opt.load_state_dict(ckpt["optimizer"])
        if disc and ckpt.get("discriminator"):
            disc.load_state_dict(ckpt["discriminator"])
            disc_opt.load_state_dict(ckpt["disc_optimizer"])
        start_epoch, elapsed = ckpt["epoch"], ckpt.get("train_seconds", 0.0)
        gen.set_state(ckpt["loader_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
    ema = WeightAverage(model, cfg.optim.ema) if cfg.optim.ema else None  # starts from the weights trained on
    if ema is not None and saved_ema:
        ema.load_state_dict(saved_ema)

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.amp
                else contextlib.nullcontext())
    budget_s = cfg.optim.time_budget_min * 60 if cfg.optim.time_budget_min else None

    def report(epoch: int, batch_no: int, seconds: float, loss: float, lr: float) -> None:
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2g}")
        if on_progress:
            on_progress({"epoch": epoch + 1, "epochs": total_epochs, "batch": batch_no, "batches": len(loader),
                         "train_seconds": seconds, "loss": loss, "lr": lr})

    epochs_done = start_epoch
    for epoch in range(start_epoch, cfg.optim.epochs):
        if budget_s is not None and epoch > start_epoch and elapsed + elapsed / epoch > budget_s:
            break  # the next epoch (as long as the mean so far) would not fit in the budget
        t0 = time.time()
        stage = 1 if epoch < cfg.optim.stage1_epochs else 2
        if hasattr(model, "set_stage"):
            model.set_stage(stage)
        model.train()
        if cfg.optim.freeze_bn:
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{total_epochs}", disable=not progress)
        for batch_no, (frames, flows) in enumerate(bar, 1):
            frames, flows = frames.to(device), flows.to(device)
            with autocast:
                out = model(frames, flows)
                terms = model.losses(out, frames, flows)
                if disc is not None and stage == 2:
                    terms["adversarial"] = adv_weight * ((disc(out["prediction"]) - 1) ** 2).mean()
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}: {terms}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            set_lr(opt, cfg.optim.lr, cfg.optim.schedule, epoch * len(loader) + batch_no - 1,
                   cfg.optim.epochs * len(loader))
            opt.step()
            if ema is not None:
                ema.update(model)
            if disc is not None and stage == 2:
                with autocast:
                    real = ((disc(out["target"]) - 1) ** 2).mean()
                    fake = (disc(out["prediction"].detach()) ** 2).mean()
                disc_opt.zero_grad(set_to_none=True)
                ((real + fake) / 2).backward()
                disc_opt.step()
            report(epoch, batch_no, elapsed + time.time() - t0, loss.item(), opt.param_groups[0]["lr"])
        elapsed += time.time() - t0
        epochs_done = epoch + 1
        save_checkpoint(_checkpoint(cfg, model, opt, disc, disc_opt, epochs_done, elapsed, gen, ema), ckpt_path)

    if head is not None and epochs_done >= cfg.optim.epochs:
        if ema is not None:  # the predictor learns on the averaged model it will score with
            model.load_state_dict(ema.averaged())
            ema = None
        head_lr = cfg.optim.predictor_lr or cfg.optim.lr
        head_opt = torch.optim.Adam(head.parameters(), lr=head_lr, weight_decay=cfg.optim.weight_decay)
        if saved_head:
            head_opt.load_state_dict(saved_head["optimizer"])
        for epoch in range(epochs_done, total_epochs):
            t0 = time.time()
            model.eval()
            head.train()
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{total_epochs} (predictor)", disable=not progress)
            for batch_no, (frames, flows) in enumerate(bar, 1):
                loss = sum(model.predictor_losses(frames.to(device), flows.to(device)).values())
                head_opt.zero_grad(set_to_none=True)
                loss.backward()
                set_lr(head_opt, head_lr, "cosine", (epoch - cfg.optim.epochs) * len(loader) + batch_no - 1,
                       cfg.optim.predictor_epochs * len(loader))
                head_opt.step()
                report(epoch, batch_no, elapsed + time.time() - t0, loss.item(), head_opt.param_groups[0]["lr"])
            elapsed += time.time() - t0
            epochs_done = epoch + 1
            ckpt = _checkpoint(cfg, model, opt, disc, disc_opt, epochs_done, elapsed, gen, ema)
            ckpt["predictor_optimizer"] = {"optimizer": head_opt.state_dict()}
            save_checkpoint(ckpt, ckpt_path)

    ckpt = _checkpoint(cfg, model, opt, disc, disc_opt, epochs_done, elapsed, gen, ema)
    if ema is not None:  # the finished model is the average; the raw weights stay for a resumed run
        ckpt["train_model"] = {k: v.clone() for k, v in ckpt["model"].items()}  # state_dict() shares storage
        model.load_state_dict(ema.averaged())
        ckpt["model"] = model.state_dict()
    per_clip = clip_components(model, ds, device)
    if cfg.score.speed_weight:
        spec = MotionSpeed()
        per_clip = [np.concatenate(c, 1) for c in zip(per_clip, speed_components(ds, cfg.flow, spec, device))]
        ckpt["speed"] = spec.model_dump()
    ckpt["stats"] = score_stats(model, per_clip, cfg)
    ckpt["conditioning"] = None if conditioning is None else conditioning.model_dump()
    frames, flows = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
    ckpt["verify_inputs"] = {"frames": frames, "flows": flows}
    ckpt["complete"] = True
    save_checkpoint(ckpt, ckpt_path)
    return ckpt_path


def _same_model_args(ckpt: dict, model: AnomalyModel) -> bool:
    """Whether a checkpoint's network is ``model``'s. Its arguments are filled in with the defaults of
    today's code first, so a run saved before an argument was added resumes as the model it was, and the
    method's score-only arguments (``score_args``, AMSRC-Net's ``speed_against``, ...) may differ: they change
    how the same weights score, not what training learns."""
    def network(args: dict) -> dict:
        return {k: v for k, v in args.items() if k not in model.score_args}
    return network(build_model(ckpt["method"], **ckpt["model_args"]).model_args()) == network(model.model_args())


def set_lr(opt: torch.optim.Optimizer, lr: float, schedule: str, step: int, steps: int) -> None:
    """Set the rate of ``step`` (0-based) of ``steps``: ``lr``, or (``cosine``) ``lr`` annealed to 0 along a
    cosine. A function of the step alone, so a resumed run goes on where it stopped with nothing more in
    the checkpoint; the main epochs and the predictor's share it."""
    scale = 0.5 * (1 + math.cos(math.pi * step / steps)) if schedule == "cosine" else 1.0
    for group in opt.param_groups:
        group["lr"] = lr * scale


def _checkpoint(cfg: TrainConfig, model: AnomalyModel, opt, disc, disc_opt, epoch: int,
                elapsed: float, gen: torch.Generator, ema: WeightAverage | None = None) -> dict:
    return {
        "method": model.method, "model_args": model.model_args(), "model": model.state_dict(),
        "config": cfg.model_dump(mode="json"), "optimizer": opt.state_dict(),
        "discriminator": disc.state_dict() if disc else None,
        "disc_optimizer": disc_opt.state_dict() if disc_opt else None,
        "flow_spec": build_flow(**cfg.flow).spec, "epoch": epoch, "train_seconds": elapsed, "loader_rng": gen.get_state(),
        "torch_rng": torch.get_rng_state(), "complete": False, "ema": ema.state_dict() if ema else None,
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                   f"{torch.get_num_threads()} threads, "
                   f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
    }
