"""Parity records: the evidence that a model may run at a reduced precision.

A precision other than fp32 changes every number a model gives; it is used only where it was shown not to
change the results: on labelled test clips, the model's components at that precision stay within
:data:`COMPONENT_TOLERANCE` of fp32 ONNX Runtime, and the frame-level AUC of both protocols moves by at most
:data:`AUC_TOLERANCE` (``amvad eval --backend B --precision P --record`` measures it and writes the record).
The record lies beside the model, ``<model>.parity.json``, and names the model's content hash, so a record
never vouches for another file.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from .files import write_atomic

# The most the AUC of either protocol may move against fp32 ONNX Runtime (issue 23's gate).
AUC_TOLERANCE = 0.005
# The most a component may move, relative to the spread of its fp32 values over the clips (its standard
# deviation), at the 99th percentile of frames: scores are z-scores of the components, so this bounds how
# far a score moves in units the threshold is set in.
COMPONENT_TOLERANCE = 0.05


class ParityCheck(BaseModel):
    """One backend and precision measured against fp32 ONNX Runtime on labelled clips."""
    model_config = ConfigDict(extra="forbid")
    backend: str
    precision: str
    passed: bool
    component_shift_p99: float    # |c - c_fp32| / std(c_fp32), 99th percentile over frames, worst component
    component_shift_max: float
    auc_paper: float
    auc_paper_fp32: float
    auc_stream: float
    auc_stream_fp32: float
    data: str
    frames: int
    date: str

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.precision}"

    def verdict(self) -> str:
        shift = max(abs(self.auc_paper - self.auc_paper_fp32), abs(self.auc_stream - self.auc_stream_fp32))
        return (f"{self.key}: components moved {self.component_shift_p99:.3f} std at p99 (tolerance "
                f"{COMPONENT_TOLERANCE}), AUC by {shift:.4f} (tolerance {AUC_TOLERANCE}): "
                f"{'passed' if self.passed else 'failed'}")


class ParityRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str
    checks: dict[str, ParityCheck] = {}


def record_path(model: Path) -> Path:
    return model.with_name(f"{model.stem}.parity.json")


def read_record(model: Path, sha256: str) -> ParityRecord | None:
    """The parity record of ``model`` if there is one for this very content (None otherwise, also for a file
    that does not parse: no record means fp32)."""
    path = record_path(model)
    try:
        record = ParityRecord.model_validate_json(path.read_text())
    except (OSError, ValidationError, ValueError):
        return None
    return record if record.sha256 == sha256 else None


def passed(model: Path, sha256: str, backend: str, precision: str) -> str | None:
    """None when ``backend``/``precision`` passed for this model, else why not (for the model to report)."""
    record = read_record(model, sha256)
    check = record.checks.get(f"{backend}/{precision}") if record else None
    if check is None:
        return (f"no parity record for {backend}/{precision} of this model (measure one with `amvad eval "
                f"--model {model.name} --backend {backend} --precision {precision} --record`)")
    return None if check.passed else f"its parity check failed ({check.verdict()})"


def write_check(model: Path, sha256: str, check: ParityCheck) -> Path:
    """Add (or replace) one check in the model's record; a record of other content is started afresh."""
    record = read_record(model, sha256) or ParityRecord(sha256=sha256)
    record.checks[check.key] = check
    path = record_path(model)
    write_atomic(path, json.dumps(record.model_dump(), indent=1) + "\n")
    return path


def judge(component_shift_p99: float, auc_shifts: tuple[float, float]) -> bool:
    return component_shift_p99 <= COMPONENT_TOLERANCE and max(abs(s) for s in auc_shifts) <= AUC_TOLERANCE
