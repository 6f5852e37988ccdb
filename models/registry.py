"""Method name -> model class, and the bundled exported models shipped inside the package."""

from __future__ import annotations

from pathlib import Path

from .ammc import AMMCNet
from .amsrc import AMSRCNet
from .comemory import CoMemoryNet
from .contract import AnomalyModel

METHODS: dict[str, type[AnomalyModel]] = {
    AMMCNet.method: AMMCNet,
    AMSRCNet.method: AMSRCNet,
    CoMemoryNet.method: CoMemoryNet,
}

BUNDLED_DIR = Path(__file__).parent / "bundled"


def build_model(method: str, **args) -> AnomalyModel:
    """The one place where a method name and keyword arguments become a network."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHODS)}")
    try:
        return METHODS[method](**args)
    except TypeError as exc:  # unknown or missing constructor arguments
        raise ValueError(f"bad arguments for method {method!r}: {exc}") from None


def bundled_models() -> dict[str, Path]:
    """Names of the exported models shipped with the package (e.g. ``ped2``) and their files."""
    return {p.stem: p for p in sorted(BUNDLED_DIR.glob("*.onnx"))}


def resolve_model(name_or_path: str | Path) -> Path:
    """A bundled model name or a path to an exported ``.onnx`` file -> an existing file path."""
    bundled = bundled_models()
    if str(name_or_path) in bundled:
        return bundled[str(name_or_path)]
    path = Path(name_or_path)
    if path.is_file():
        return path
    raise FileNotFoundError(f"model {str(name_or_path)!r} is neither a file nor a bundled model "
                            f"(bundled: {sorted(bundled) or 'none'})")
