"""``amvad robustness``: false alarms and AUC of a model under benign camera changes (lighting, gamma,
flicker, shake, sway, noise, blur, H.264 compression, low light) swept over magnitudes
(training/robustness.py). Parsing imports nothing heavy; the command imports training/ and the service's
H.264 writer when it runs (the one place that may hand the writer to training/). The Markdown table goes
to stdout, progress to stderr."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import comma_floats

# training/perturbations.py's BATTERY names, spelled here so that parsing imports nothing heavy
# (tests/training/test_robustness.py checks that they agree)
CHANGES = ("lighting_step", "lighting_ramp", "gamma", "flicker", "shake", "sway", "noise", "blur", "compression",
           "low_light")


def parse_changes(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHANGES]
    if unknown or not names:
        raise ValueError(f"--changes: unknown {', '.join(unknown) or '(none given)'}; expected names from "
                         f"{', '.join(CHANGES)}")
    return names


def parse_magnitudes(items: list[str] | None, changes: list[str] | None) -> dict[str, list[float]] | None:
    """``NAME=v1,v2`` per change, or bare ``v1,v2`` when exactly one change is run."""
    if not items:
        return None
    out: dict[str, list[float]] = {}
    for item in items:
        name, sep, values = item.rpartition("=")
        if not sep:
            if not changes or len(changes) != 1:
                raise ValueError(f"--magnitudes {item}: say which change (NAME=v1,v2) unless --changes names one")
            name = changes[0]
        out[name] = comma_floats(values, f"--magnitudes {item}")
    return out


def _robustness(args: argparse.Namespace) -> None:
    changes = parse_changes(args.changes)
    magnitudes = parse_magnitudes(args.magnitudes, changes)
    from amvad.service.h264 import H264Writer
    from amvad.training.robustness import run_robustness, table, where
    res = run_robustness(args.model, args.data, changes=changes, magnitudes=magnitudes,
                         clips=args.clips, seed=args.seed, writer=H264Writer, normal_split=args.normal_split,
                         test_split=args.test_split, json_out=args.json, plot_dir=args.plot, progress=not args.quiet,
                         live=args.live, forget=args.forget, reference=args.reference, threshold=args.threshold)
    learned = "" if res.get("learn_threshold") is None else f" (learning under {res['learn_threshold']:.3f})"
    own = "" if res["threshold"] == res["model_threshold"] else f" (the model's: {res['model_threshold']:.3f})"
    print(f"{res['method']} {res['model']} ({res['backend']} {res['precision']}), threshold {res['threshold']:.3f}"
          f"{own}{learned}, "
          f"{res['protocol']} protocol, forget {res['forget']:g}; "
          f"normal: {len(res['normal']['clips'])} {res['normal']['split']} clips, {res['normal']['minutes']:.1f} min; "
          f"test: {len(res['test']['clips'])} {res['test']['split']} clips; {res['date']}, {res['machine']}, "
          f"{res['seconds']:.0f} s")
    print(table(res))
    if spots := where(res):
        print(spots)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``robustness`` subcommand (called by cli/main.py's ``build_parser``)."""
    r = sub.add_parser("robustness", help="false alarms and AUC under benign camera changes (light, shake, "
                       "noise, blur, compression, ...) at several magnitudes")
    r.add_argument("--model", default="ped2", help="path to an exported .onnx or a bundled name")
    r.add_argument("--data", required=True, type=Path, help="a dataset with a normal and a labelled split")
    r.add_argument("--changes", help=f"comma-separated, default all: {', '.join(CHANGES)}")
    r.add_argument("--magnitudes", nargs="+", metavar="NAME=V,V",
                   help="magnitudes to sweep per change (default each change's own sweep); bare V,V when "
                        "--changes names one change")
    r.add_argument("--clips", type=int, help="score only this many clips of each split, spread evenly (quick runs)")
    r.add_argument("--seed", type=int, default=0, help="seed of the random changes (flicker, shake, noise, ...)")
    r.add_argument("--normal-split", default="training", help="normal footage for events and flagged frames")
    r.add_argument("--test-split", default="testing", help="labelled clips for the AUC")
    r.add_argument("--live", action="store_true",
                   help="score each variant's clips as one live camera (running statistics carried from clip to "
                        "clip, normal footage first) instead of each clip as a fresh upload")
    r.add_argument("--forget", type=float, default=0.002,
                   help="running statistics' rate per frame judged normal (the service's `forget`; 0: the "
                        "training statistics throughout)")
    r.add_argument("--reference", action="store_true",
                   help="also score the labelled clips with a model-free motion score (TV-L1 speed over 3 "
                        "frames, averaged over 8) and report its AUC (auc_reference): what the changed picture "
                        "leaves any speed detector, to tell a model's loss from the picture's")
    r.add_argument("--threshold", type=float,
                   help="judge at this threshold instead of the model's (as a camera set to it would: events, "
                        "flagged frames, and what the running statistics learn from)")
    r.add_argument("--json", type=Path, help="write the full results here")
    r.add_argument("--plot", type=Path, help="write one chart per change (<change>.png) into this folder")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_robustness)
