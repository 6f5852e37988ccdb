"""``amvad export``: a finished checkpoint -> a self-describing ONNX file, checked against PyTorch."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from amvad.models.contract import INPUT_NAMES, OUTPUT_NAMES, AnomalyModel
from amvad.models.metadata import METADATA_KEY, ModelMetadata
from amvad.models.registry import METHODS, build_model, resolve_model
from amvad.runtime.files import atomic_path

OPSET = 17


class ScoreGraph(torch.nn.Module):
    """What gets exported: the contract's ``score`` and nothing else."""

    def __init__(self, model: AnomalyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, flows: torch.Tensor, mask: torch.Tensor):
        return self.model.score(frames, flows, mask)


def full_mask(frames: torch.Tensor) -> torch.Tensor:
    """The mask that keeps every pixel, for a batch of windows (B, T, C, H, W)."""
    return torch.ones(frames.shape[0], 1, *frames.shape[-2:])


def export_onnx(model: AnomalyModel, frames: torch.Tensor, flows: torch.Tensor, dst) -> None:
    """Trace the contract's ``score`` (frames, flows, mask) to ONNX (opset 17, dynamic batch) at ``dst``."""
    axes = {n: {0: "batch"} for n in (*INPUT_NAMES, *OUTPUT_NAMES)}
    with torch.no_grad():
        torch.onnx.export(ScoreGraph(model).eval(), (frames, flows, full_mask(frames)), dst,
                          input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES), dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)


def load_checkpoint(path: str | Path) -> tuple[AnomalyModel, dict]:
    """Rebuild the model of a checkpoint from the arguments it carries."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(ckpt["method"], **ckpt["model_args"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def build_metadata(model: AnomalyModel, ckpt: dict) -> ModelMetadata:
    stats, cfg = ckpt["stats"], ckpt["config"]
    return ModelMetadata(
        method=model.method, model_args=model.model_args(), clip_len=model.clip_len,
        channels=model.channels, height=model.height, width=model.width,
        input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, flow=ckpt["flow_spec"],
        components=stats["components"], threshold=stats["threshold"], smoothing=stats["smoothing"],
        smoothing_drop=stats.get("smoothing_drop", 0),
        conditioning=ckpt.get("conditioning"), speed=ckpt.get("speed"),
        training={"data": str(cfg["data"]["root"]), "epochs": ckpt["epoch"],
                  "train_seconds": round(ckpt["train_seconds"], 1), "machine": ckpt["machine"],
                  "config": cfg, "exported": date.today().isoformat()})


def write_exported(model: AnomalyModel, meta: ModelMetadata, frames: torch.Tensor, flows: torch.Tensor,
                   expected: list[np.ndarray], out: str | Path, atol: float) -> None:
    """Export ``model`` with ``meta`` attached to ``out``, but only if ONNX Runtime then gives ``expected``
    (within ``atol``) on these windows; otherwise raise and leave ``out`` as it was."""
    with atomic_path(out) as tmp:
        export_onnx(model, frames, flows, str(tmp))
        proto = onnx.load(str(tmp))
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, meta.to_json()
        proto.producer_name = "amvad"
        onnx.save(proto, str(tmp))
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"frames": frames.numpy(), "flows": flows.numpy(), "mask": full_mask(frames).numpy()})
        for name, e, g in zip(OUTPUT_NAMES, expected, got):
            diff = float(np.abs(e - g).max())
            if not diff <= atol:
                raise ValueError(f"export check failed: ONNX Runtime output {name!r} differs from "
                                 f"the reference by {diff:.3g} > {atol:g}")


def export(checkpoint: str | Path, out: str | Path, *, atol: float = 1e-4) -> ModelMetadata:
    """Export, attach metadata, and compare ONNX Runtime with PyTorch on the real training windows
    stored in the checkpoint; refuse (and leave ``out`` untouched) when they differ by more than atol."""
    model, ckpt = load_checkpoint(checkpoint)
    if not ckpt.get("complete"):
        raise ValueError(f"{checkpoint}: training did not finish (epoch {ckpt.get('epoch')}); "
                         f"finish it with `amvad train --config ... --resume` before exporting")
    meta = build_metadata(model, ckpt)
    frames, flows = ckpt["verify_inputs"]["frames"], ckpt["verify_inputs"]["flows"]
    with torch.no_grad():
        expected = [t.numpy() for t in model.score(frames, flows)]
    write_exported(model, meta, frames, flows, expected, out, atol)
    return meta


def rewrite_metadata(source: str | Path, out: str | Path, **update) -> ModelMetadata:
    """The same graph written to ``out`` (atomically; may be ``source``) with fields of its metadata
    replaced: nothing is traced again, so nothing can drift (a fit's threshold, an older model's
    conditioning)."""
    path = resolve_model(source)
    proto = onnx.load(str(path))
    entry = next((p for p in proto.metadata_props if p.key == METADATA_KEY), None)
    if entry is None:
        raise ValueError(f"{path.name}: not an amvad model (no {METADATA_KEY!r} metadata)")
    meta = ModelMetadata.model_validate({**ModelMetadata.model_validate_json(entry.value).model_dump(), **update})
    entry.value = meta.to_json()
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return meta


def reexport(source: str | Path, out: str | Path, *, atol: float = 1e-4,
             score_args: dict | None = None) -> ModelMetadata:
    """An exported model (a bundled name or file, e.g. one made before masks) written again under the
    current contract: same weights (recovered from the graph), same metadata, checked against the old
    file on random windows (full mask). ``score_args`` sets constructor arguments that change only how
    the network scores (the method's ``score_args``); the new graph is then checked against the rebuilt
    network instead, and the score statistics are stale until taken again (``add_conditioning``)."""
    from .warm_start import exported_metadata, weights_from_exported  # warm_start imports this module
    path = resolve_model(source)
    old = exported_metadata(onnx.load(str(path)), path)
    allowed = METHODS[old.method].score_args
    unknown = sorted(set(score_args or {}) - set(allowed))
    if unknown:
        raise ValueError(f"{old.method} models take no score argument {unknown[0]!r}; they take "
                         f"{list(allowed) or 'none'}")
    model = build_model(old.method, **{**old.model_args, **(score_args or {})})
    model.load_state_dict(weights_from_exported(model, path))
    model.eval()
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(4, model.clip_len, model.channels, model.height, model.width, generator=gen)
    flows = torch.randn(4, model.clip_len - 1, 2, model.height, model.width, generator=gen)
    if score_args:
        with torch.no_grad():
            expected = [t.numpy() for t in model.score(frames, flows)]
    else:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {"frames": frames.numpy(), "flows": flows.numpy(), "mask": full_mask(frames).numpy()}
        expected = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})
    meta = old.model_copy(update={"input_names": INPUT_NAMES, "output_names": OUTPUT_NAMES,
                                  "model_args": model.model_args(),
                                  "training": {**old.training, "reexported": date.today().isoformat(),
                                               **({"score_args": score_args} if score_args else {})}})
    write_exported(model, meta, frames, flows, expected, out, atol)
    return meta
