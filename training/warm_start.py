"""Start training from an exported model's weights (``amvad fit --init ped2``).

The exporter folds each batch norm into the convolution before it, so an ONNX file holds, per
conv + batch-norm pair, one convolution with a bias. Convolution layers are size-independent, so the
weights fit a network of the same method and widths at any input size. They are put back as: the conv
weight, and a batch norm that is the identity plus that bias (mean 0, variance 1 - eps, scale 1);
fine-tuning then keeps batch-norm statistics fixed (``optim.freeze_bn``). The result is checked: the
rebuilt network must score like ONNX Runtime does on the same inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from amvad.models.contract import AnomalyModel
from amvad.models.metadata import METADATA_KEY, ModelMetadata
from amvad.models.registry import build_model, resolve_model

# Constructor arguments that must agree for weights to fit (the input size need not).
SHAPE_ARGS = ("clip_len", "channels", "base_width", "num_items", "mem_items", "top_k")


def exported_metadata(proto: onnx.ModelProto, path: Path) -> ModelMetadata:
    meta = {p.key: p.value for p in proto.metadata_props}.get(METADATA_KEY)
    if meta is None:
        raise ValueError(f"{path}: not an amvad model (no {METADATA_KEY!r} metadata)")
    return ModelMetadata.model_validate(json.loads(meta))


def score_call_order(model: AnomalyModel) -> list[str]:
    """Names of the model's modules in the order ``score`` first calls them: what its export holds."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: order.append(name) if name not in order else None)
             for name, m in model.named_modules() if name]
    try:
        with torch.no_grad():
            model.eval().score(torch.rand(1, model.clip_len, model.channels, model.height, model.width),
                               torch.zeros(1, model.clip_len - 1, 2, model.height, model.width))
    finally:
        for h in hooks:
            h.remove()
    return order


def training_only(key: str, scored: set[str]) -> bool:
    """A state-dict entry of a module that ``score`` never calls (AMSRC-Net's flow and feature decoders): it
    shaped training and is not in the export, so a model rebuilt from the export keeps it as initialised."""
    module = key.rpartition(".")[0]
    return bool(module) and not any(module == n or module.startswith(n + ".") for n in scored)


def following_batch_norm(model: AnomalyModel, conv_name: str) -> str | None:
    """The BatchNorm2d right after ``conv_name`` in its Sequential (what the exporter folded into it), or None."""
    parent_name, _, index = conv_name.rpartition(".")
    parent = model.get_submodule(parent_name)
    if not isinstance(parent, nn.Sequential) or int(index) + 1 >= len(parent):
        return None
    bn_name = f"{parent_name}.{int(index) + 1}"
    return bn_name if isinstance(model.get_submodule(bn_name), nn.BatchNorm2d) else None


def weights_from_exported(model: AnomalyModel, name_or_path: str | Path, *, atol: float = 1e-3) -> dict:
    """A state dict for ``model`` holding the weights of an exported model of the same method and widths.
    Raises ValueError naming the difference when the shapes do not allow it."""
    path = resolve_model(name_or_path)
    proto = onnx.load(str(path))
    meta = exported_metadata(proto, path)
    if meta.method != model.method:
        raise ValueError(f"{path} is a {meta.method} model; cannot start a {model.method} model from it")
    mine = model.model_args()
    for arg in SHAPE_ARGS:
        if arg in mine and meta.model_args.get(arg) != mine[arg]:
            raise ValueError(f"{path} has {arg}={meta.model_args.get(arg)}, this model {mine[arg]}: weights do not fit")
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    convs = [(n.input[1], n.input[2] if len(n.input) > 2 else None) for n in proto.graph.node
             if n.op_type in ("Conv", "ConvTranspose")]
    # the exported network at its own size: the call order of its convolutions is the graph's order
    twin = build_model(meta.method, **meta.model_args)
    adopted = twin.adopt_export(set(inits))
    scored = score_call_order(twin)
    order = [n for n in scored if isinstance(twin.get_submodule(n), (nn.Conv2d, nn.ConvTranspose2d))]
    if len(order) != len(convs):
        raise ValueError(f"{path}: {len(convs)} convolutions in the graph, {len(order)} in a {meta.method} model")
    state = {k: v.clone() for k, v in twin.state_dict().items()}
    filled = set(adopted)
    for conv_name, (w_name, b_name) in zip(order, convs):
        weight = torch.from_numpy(inits[w_name].copy())
        if tuple(weight.shape) != tuple(state[f"{conv_name}.weight"].shape):
            raise ValueError(f"{path}: convolution {conv_name} has shape {tuple(weight.shape)}, "
                             f"expected {tuple(state[f'{conv_name}.weight'].shape)}")
        state[f"{conv_name}.weight"] = weight
        filled.add(f"{conv_name}.weight")
        bias = torch.from_numpy(inits[b_name].copy()) if b_name else None
        bn = following_batch_norm(twin, conv_name)
        if bn is None:
            if f"{conv_name}.bias" not in state:
                raise ValueError(f"cannot map folded convolution {conv_name}: no batch norm follows it")
            state[f"{conv_name}.bias"] = bias
            filled.add(f"{conv_name}.bias")
            continue
        if f"{conv_name}.bias" in state:  # a bias of its own before the batch norm: folded in too
            state[f"{conv_name}.bias"] = torch.zeros_like(state[f"{conv_name}.bias"])
            filled.add(f"{conv_name}.bias")
        # folded: the batch norm after it becomes identity + bias
        eps = twin.get_submodule(bn).eps
        state[f"{bn}.weight"] = torch.ones_like(state[f"{bn}.weight"])
        state[f"{bn}.bias"] = bias
        state[f"{bn}.running_mean"] = torch.zeros_like(state[f"{bn}.running_mean"])
        state[f"{bn}.running_var"] = torch.full_like(state[f"{bn}.running_var"], 1.0 - eps)
        filled |= {f"{bn}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    for key in state:  # everything else (memory items, ...) is stored under its own name
        if key not in filled and f"model.{key}" in inits:
            state[key] = torch.from_numpy(inits[f"model.{key}"].copy())
            filled.add(key)
    called = set(scored)
    missing = sorted(k for k in state if k not in filled and not k.endswith("num_batches_tracked")
                     and not training_only(k, called))
    if missing:
        raise ValueError(f"{path}: no weights found for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    twin.load_state_dict(state)
    _check_against_onnx(twin, path, atol)
    return state


def _check_against_onnx(twin: AnomalyModel, path: Path, atol: float) -> None:
    rng = np.random.default_rng(0)
    frames = rng.random((2, twin.clip_len, twin.channels, twin.height, twin.width), dtype=np.float32)
    flows = rng.normal(0, 1, (2, twin.clip_len - 1, 2, twin.height, twin.width)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"frames": frames, "flows": flows, "mask": np.ones((2, 1, twin.height, twin.width), np.float32)}
    want = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})
    with torch.no_grad():
        got = twin.eval().score(torch.from_numpy(frames), torch.from_numpy(flows))
    diff = max(float(np.abs(w - g.numpy()).max()) for w, g in zip(want, got))
    if not diff <= atol:
        raise ValueError(f"{path}: the recovered weights score differently from ONNX Runtime (by {diff:.3g})")
