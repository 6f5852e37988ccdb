"""Exported model files with edited metadata, as a careless or hostile upload would carry (import as
``from tests.support.model_files import with_metadata``)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from amvad.models.metadata import METADATA_KEY


def with_metadata(src: Path, dst: Path, *, flow: dict | None = None, **fields) -> Path:
    """A copy of the exported model ``src`` at ``dst`` whose amvad metadata has ``fields`` replaced and its
    flow settings updated with ``flow``; the graph is untouched."""
    proto = onnx.load(str(src))
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    meta = json.loads(entry.value)
    meta.update(fields)
    meta["flow"] = {**meta["flow"], **(flow or {})}
    entry.value = json.dumps(meta)
    onnx.save(proto, str(dst))
    return dst
