"""The ``amvad`` command, the product's one entry point: ``train``, ``fit``, ``export``, ``eval``,
``flow-check``, ``speed`` (training/), ``serve`` (service/), ``bench`` (cli/bench.py), ``backup`` and
``restore`` (cli/backup.py), ``robustness`` (cli/robustness.py), ``user`` (cli/users.py) and ``tls``
(cli/tls.py). Parsing needs
argparse only, and each command imports its layer when it runs, so ``amvad --help`` and argument errors
import nothing heavy (tests/cli/test_main.py checks it)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .args import comma_floats, score_args
from .backup import add_parsers as add_backup_parsers
from .robustness import CHANGES, parse_changes
from .robustness import add_parsers as add_robustness_parsers
from .tls import add_parsers as add_tls_parsers
from .users import add_parsers as add_user_parsers

if TYPE_CHECKING:
    from amvad.models.metadata import ModelMetadata

# runtime.backends' names, spelled here so that parsing imports nothing heavy (tests/cli/test_main.py checks
# that they agree)
BACKENDS = ("onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16")


class CommandFailed(Exception):
    """A command that could not do its work for a reason outside the arguments (exit status 1)."""


def _train(args: argparse.Namespace) -> None:
    from amvad.training.config import load_config
    from amvad.training.train import train
    overrides = {"data.root": args.data} if args.data else {}
    if args.epochs:
        overrides["optim.epochs"] = args.epochs
    if args.out:
        overrides["out_dir"] = args.out
    cfg = load_config(args.config, overrides)
    path = train(cfg, resume=args.resume, progress=not args.quiet)
    print(f"checkpoint: {path}")


def _fit(args: argparse.Namespace) -> None:
    if args.job is not None:
        if args.footage or args.out:
            raise ValueError("--job DIR takes no footage or --out: the job's request.json names them")
        from amvad.service.h264 import H264Writer
        from amvad.training.fit import run_job
        res = run_job(args.job, H264Writer)
    else:
        if not args.footage or args.out is None:
            raise ValueError("give the footage and --out PATH.onnx (or --job DIR)")
        from pydantic import ValidationError

        from amvad.runtime.fit_job import FitSpec
        from amvad.training.fit import run_fit
        try:
            spec = FitSpec(footage=args.footage, out=args.out, minutes=args.minutes, method=args.method,
                           init=args.init, false_alarms_per_hour=args.false_alarms_per_hour, threads=args.threads,
                           seed=args.seed, base_width=args.base_width, max_pixels=args.max_pixels,
                           augment=args.augment)
        except ValidationError as exc:
            raise ValueError("; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}"
                                       for e in exc.errors(include_input=False))) from None
        from amvad.service.h264 import H264Writer
        res = run_fit(spec, progress_file=args.progress_json, progress=not args.quiet, h264=H264Writer)
    print(json.dumps(res, indent=1))


def _export(args: argparse.Namespace) -> None:
    from amvad.training.export import export, reexport
    if (args.checkpoint is None) == (args.onnx is None):
        raise ValueError("give exactly one of --checkpoint (a finished training run) or --onnx (an exported model)")
    if args.condition_on and not args.onnx:
        raise ValueError("--condition-on goes with --onnx (a trained model gets its conditioning in training)")
    if args.coded_start_on and (not args.onnx or args.condition_on):
        raise ValueError("--coded-start-on goes with --onnx and without --condition-on (which takes it too)")
    rescored = (args.smoothing, args.smoothing_drop, args.threshold_quantile, args.calibrate_under, args.flow_span,
                args.speed_weight)
    if (args.weights or any(v is not None for v in rescored)) and not args.condition_on:
        raise ValueError("--weights, --smoothing, --smoothing-drop, --threshold-quantile, --calibrate-under, "
                         "--flow-span and --speed-weight go with --condition-on (the threshold is taken again "
                         "under them)")
    if args.score_arg and not args.condition_on:
        raise ValueError("--score-arg goes with --condition-on (the score statistics are taken again under it)")
    if args.checkpoint:
        meta = export(args.checkpoint, args.out)
        if meta.conditioning is not None:
            meta = _blur_limit_from_training_data(args.out, meta)
    elif args.condition_on:
        from amvad.service.h264 import H264Writer
        from amvad.training.condition import add_conditioning
        source = args.onnx
        if args.score_arg:
            meta = reexport(args.onnx, args.out, score_args=score_args(args.score_arg))
            source = args.out
        meta = add_conditioning(source, args.out, args.condition_on, args.split, stabilise=not args.no_stabilise,
                                weights=comma_floats(args.weights, "--weights") if args.weights else None,
                                smoothing=args.smoothing, smoothing_drop=args.smoothing_drop,
                                threshold_quantile=args.threshold_quantile,
                                calibrate_under=calibrate_under(args.calibrate_under), flow_span=args.flow_span,
                                speed_weight=args.speed_weight, writer=H264Writer)
    elif args.coded_start_on:
        from amvad.service.h264 import H264Writer
        from amvad.training.condition import set_coded_start
        from amvad.training.data import find_clips
        from amvad.training.export import rewrite_metadata
        sources = find_clips(args.coded_start_on, args.split)  # fails before the copy when there is no footage
        rewrite_metadata(args.onnx, args.out)
        meta = set_coded_start(args.out, sources, H264Writer)
        start = meta.coded_start
        print("coded start: " + ("none (the footage reads as blocky coded as not)" if start is None
                                 else f"from blockiness {start.min_blockiness} (CRF {start.crf:g})"))
    else:
        meta = reexport(args.onnx, args.out)
    print(f"exported {meta.method} to {args.out} (threshold {meta.threshold:.3f}, "
          f"components {[c.name for c in meta.components]})")


def calibrate_under(text: str | None) -> list[str] | None:
    """``--calibrate-under``: None (the model's own), [] for 'none', the battery for 'all', else the names."""
    if text is None:
        return None
    named = {"none": [], "all": list(CHANGES)}
    return named[text.strip()] if text.strip() in named else parse_changes(text)


def _blur_limit_from_training_data(out: Path, meta: ModelMetadata) -> ModelMetadata:
    """A model trained with conditioning gets its blur limit (``min_sharpness``), and its threshold under
    its recipe's benign changes, measured on its training split when that is on this machine; otherwise it
    is exported without them (the camera watch's own rule, the clean footage's threshold), and the message
    says how to add them."""
    from amvad.service.h264 import H264Writer
    from amvad.training.condition import set_blur_limit_from_training
    try:
        return set_blur_limit_from_training(out, writer=H264Writer)
    except FileNotFoundError as exc:
        print(f"amvad export: blur limit not measured ({exc}); add it with `amvad export --onnx {out} --out "
              f"{out} --condition-on DATA`", file=sys.stderr)
        return meta


def _eval(args: argparse.Namespace) -> None:
    from amvad.runtime.engine import EngineConfig
    from amvad.training.evaluate import evaluate
    res = evaluate(args.model, args.data, split=args.split, json_out=args.json, plot_dir=args.plot,
                   progress=not args.quiet, record=args.record,
                   engine_config=EngineConfig(backend=args.backend, precision=args.precision))
    summary = {k: res[k] for k in ("method", "auc_paper", "auc_stream", "frames_scored", "backend", "precision",
                                   "seconds")}
    if "parity" in res:
        summary["parity"] = res["parity"]["verdict"]
    for protocol, points in res["alarms"].items():
        summary[protocol] = {name: None if p is None else {k: p[k] for k in (
            "threshold", "false_alarms_per_hour", "events_caught", "events_total", "detection_delay_s")}
            for name, p in points.items()}
    print(json.dumps(summary))


def _flow_check(args: argparse.Namespace) -> None:
    from amvad.training.flow_check import run_flow_check
    res = run_flow_check(args.data, size=args.size, pairs=args.pairs, progress=not args.quiet)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


def _speed(args: argparse.Namespace) -> None:
    from amvad.training.speed import measure
    for method in args.method:
        for bw in args.base_width:
            print(json.dumps(measure(method, height=args.height, width=args.width, base_width=bw,
                                     threads=args.threads, repeats=args.repeats)), flush=True)


def _serve(args: argparse.Namespace) -> None:
    from amvad.service.config import load_settings
    from amvad.service.server import ServeError, serve
    try:
        serve(load_settings(args.config, host=args.host, port=args.port, model=args.model, tls_cert=args.tls_cert,
                            tls_key=args.tls_key))
    except ServeError as exc:
        raise CommandFailed(str(exc)) from None


def _bench(args: argparse.Namespace) -> None:
    from .bench import http_bench, run_bench
    if args.soak_minutes:
        from .soak import run_soak
        res = run_soak(args.model, source=args.source, cameras=args.cameras, rate=args.rate or 3.0,
                       minutes=args.soak_minutes, backend=args.backend[0], precision=args.precision[0],
                       progress=not args.quiet)
    elif args.http:
        res = http_bench(args.http, source=args.source, camera_url=args.camera_url, cameras=args.cameras,
                         frames=args.frames, api_key=args.api_key, progress=not args.quiet)
    else:
        kwargs = dict(source=args.source, cameras=args.cameras, frames=args.frames, device=args.device,
                      rate=args.rate, heatmaps=not args.no_heatmaps, max_batch=args.max_batch,
                      batch_wait_ms=args.batch_wait_ms, flow_threads=args.flow_threads,
                      model_threads=args.model_threads, progress=not args.quiet)
        if len(args.backend) * len(args.precision) > 1:
            from .bench import compare
            passed = args.argv[args.argv.index("bench") + 1:]
            res = compare(args.model, args.backend, args.precision, argv=without_options(
                passed, {"--backend", "--precision", "--json", "--model"}))
        else:
            res = run_bench(args.model, backend=args.backend[0], precision=args.precision[0], **kwargs)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


def without_options(argv: list[str], names: set[str]) -> list[str]:
    """``argv`` less the options in ``names`` and their values (each takes one or more values)."""
    out, skipping = [], False
    for arg in argv:
        if arg.startswith("--"):
            skipping = arg.split("=", 1)[0] in names
        if not skipping:
            out.append(arg)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amvad", description="Video anomaly detection with two-stream memory "
                                "networks: train, export and evaluate models; serve them; benchmark the service.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a method from a YAML config")
    t.add_argument("--config", required=True, type=Path)
    t.add_argument("--data", help="override data.root")
    t.add_argument("--out", help="override out_dir")
    t.add_argument("--epochs", type=int, help="override optim.epochs")
    t.add_argument("--resume", action="store_true", help="continue from <out_dir>/last.pt")
    t.set_defaults(func=_train)
    fi = sub.add_parser("fit", help="fit a model of one camera's normal from its footage (one command)")
    fi.add_argument("footage", nargs="*", type=Path,
                    help="normal footage: video files, folders of videos, or folders of frame images (one per clip)")
    fi.add_argument("--out", type=Path, help="the exported model (.onnx); its model card goes beside (required "
                                             "with footage)")
    fi.add_argument("--minutes", type=float, default=30.0, help="training time budget (default 30)")
    fi.add_argument("--method", default="comemory", choices=["comemory", "ammc", "amsrc"])
    fi.add_argument("--init", default="none", choices=["none", "ped2"],
                    help="none: random weights (default; see README); ped2: fine-tune the bundled model's weights")
    fi.add_argument("--false-alarms-per-hour", type=float, default=1.0,
                    help="target false-alarm rate the threshold is set for, on held-out footage (default 1)")
    fi.add_argument("--base-width", type=int, default=12, help="network width (default 12, the bundled model's)")
    fi.add_argument("--max-pixels", type=int, default=128 * 192,
                    help="input size budget, height x width (default 24576, the bundled model's: real time on 2 cores)")
    fi.add_argument("--threads", type=int, help="torch CPU threads (default all cores)")
    fi.add_argument("--seed", type=int, default=0)
    fi.add_argument("--augment", action="store_true",
                    help="also train on the changed copies of the footage the method's recipe learns as normal "
                         "(noise and JPEG); in a 20-minute fit it cost accuracy: README")
    fi.add_argument("--progress-json", type=Path, help="keep the latest progress (stage, fraction, epoch; the "
                    "result or the error at the end) in this JSON file (runtime/fit_job.py: FitProgress)")
    fi.add_argument("--job", type=Path, metavar="DIR", help="run the fit a job folder's request.json asks for, "
                    "keeping its progress.json (how the service runs its fit jobs; runtime/fit_job.py)")
    fi.set_defaults(func=_fit)
    e = sub.add_parser("eval", help="frame-level ROC AUC, false alarms per hour and detection delays of a model")
    e.add_argument("--model", default="ped2", help="path to an exported .onnx or a bundled name")
    e.add_argument("--data", required=True, type=Path)
    e.add_argument("--split", default="testing")
    e.add_argument("--backend", default="auto", choices=["auto", *BACKENDS],
                   help="what runs the model (default auto: OpenVINO on a CPU when installed)")
    e.add_argument("--precision", default="auto", choices=["auto", *PRECISIONS],
                   help="model precision; other than fp32 ONNX Runtime, the clips are also scored on that "
                        "reference and the parity reported")
    e.add_argument("--record", action="store_true", help="write the parity check beside the model "
                   "(<model>.parity.json), where the service looks before it runs a reduced precision")
    e.add_argument("--json", type=Path, help="write the full results here")
    e.add_argument("--plot", type=Path, help="write the ROC curves (roc.png) and one score curve per clip "
                                             "(<clip>.png) into this folder")
    e.set_defaults(func=_eval)
    x = sub.add_parser("export", help="export a checkpoint (or re-export a model) to ONNX with metadata")
    x.add_argument("--checkpoint", type=Path, help="a finished training checkpoint")
    x.add_argument("--onnx", help="an exported model (or bundled name) to write again under the current contract")
    x.add_argument("--out", required=True, type=Path)
    x.add_argument("--condition-on", type=Path, metavar="DATA",
                   help="with --onnx: the same graph with level matching and stabilisation fitted on the model's "
                        "training footage (DATA/<split>/...) added to its metadata, and its score statistics "
                        "taken again from that footage as now served, for models trained before them")
    x.add_argument("--coded-start-on", type=Path, metavar="DATA",
                   help="with --onnx: only add the statistics a heavily coded stream starts from (its training "
                        "footage coded at H.264 CRF 42; --condition-on takes them too; README, Robustness)")
    x.add_argument("--split", default="training", help="the split of --condition-on or --coded-start-on "
                                                       "(default: training)")
    x.add_argument("--no-stabilise", action="store_true", help="with --condition-on: level matching only")
    x.add_argument("--weights", metavar="W1,W2,...",
                   help="with --condition-on: new weights of the score's components, in the model's order")
    x.add_argument("--smoothing", type=int, metavar="N",
                   help="with --condition-on: the score's causal window, frames (default: the model's)")
    x.add_argument("--smoothing-drop", type=int, metavar="K",
                   help="with --condition-on: leave the K highest frame scores out of the score's causal window "
                        "(a one-frame spike is a codec's or the flow's; README, Robustness)")
    x.add_argument("--threshold-quantile", type=float, metavar="Q",
                   help="with --condition-on: the threshold is this quantile of the footage's causal scores "
                        "(default: the model's own)")
    x.add_argument("--calibrate-under", metavar="CHANGES",
                   help="with --condition-on: take the threshold under these benign changes of `amvad robustness` "
                        "too (comma-separated, 'all' for the battery, 'none' for the clean footage alone; "
                        "default: the model's own; README, Robustness)")
    x.add_argument("--flow-span", type=int, metavar="N",
                   help="with --condition-on: each flow the model sees is the mean of the last N consecutive "
                        "flows (a low-bitrate stream moves small objects in jumps; README, Robustness)")
    x.add_argument("--speed-weight", type=float, metavar="W",
                   help="with --condition-on: add the runtime's motion-speed component (the fastest patch's speed "
                        "between frames 3 apart, averaged over 8 frames) to the score with weight W (0 removes it; "
                        "--weights stay the graph's own; README, Robustness)")
    x.add_argument("--score-arg", action="append", metavar="NAME=VALUE",
                   help="with --condition-on: the same weights scoring with another value of a model argument "
                        "that changes only how they score (AMSRC-Net: speed_against=either, speed_floor=0.9, "
                        "flow_sigma=1, floor_stride=4, speed_texture=0.12); repeatable")
    x.set_defaults(func=_export)
    f = sub.add_parser("flow-check", help="flow accuracy and speed on synthetic warps of real frames")
    f.add_argument("--data", required=True, type=Path)
    f.add_argument("--size", type=int, default=256)
    f.add_argument("--pairs", type=int, default=20)
    f.add_argument("--json", type=Path)
    f.set_defaults(func=_flow_check)
    s = sub.add_parser("speed", help="time model (ONNX Runtime) and flow for a method and size")
    s.add_argument("--method", nargs="+", default=["ammc", "amsrc", "comemory"])
    s.add_argument("--height", type=int, default=128)
    s.add_argument("--width", type=int, default=192)
    s.add_argument("--base-width", type=int, nargs="+", default=[8, 12, 16])
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--repeats", type=int, default=20)
    s.set_defaults(func=_speed)
    v = sub.add_parser("serve", help="HTTP/WebSocket service: clip uploads, live cameras, live page")
    v.add_argument("--config", type=Path, help="YAML service config (cameras, limits, api_key, ...)")
    v.add_argument("--host", help="bind address (default 127.0.0.1)")
    v.add_argument("--port", type=int, help="port (default 8000)")
    v.add_argument("--model", help="bundled model name or .onnx path (default ped2)")
    v.add_argument("--tls-cert", type=Path, help="PEM certificate: serve HTTPS and WSS (amvad tls self-signed)")
    v.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    v.set_defaults(func=_serve)
    b = sub.add_parser("bench", help="throughput and latency of the service pipeline (in process or --http)")
    b.add_argument("--model", default="ped2", help="bundled model name or .onnx path")
    b.add_argument("--source", type=Path, help="video file to replay (default: the bundled Ped2 sample)")
    b.add_argument("--cameras", type=int, default=1, help="concurrent streams of the source")
    b.add_argument("--frames", type=int, default=300, help="scored frames per stream")
    b.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    b.add_argument("--backend", nargs="+", default=["auto"], choices=["auto", *BACKENDS],
                   help="one or more: each backend x precision runs in turn, side by side in one report")
    b.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", *PRECISIONS],
                   help="one or more (a precision without a passing parity record runs at fp32)")
    b.add_argument("--rate", type=float, default=0.0,
                   help="replay frames/s per stream like a live camera (drops counted); 0 = as fast as possible")
    b.add_argument("--no-heatmaps", action="store_true", help="skip the JPEG heatmap of every frame")
    b.add_argument("--max-batch", type=int, help="engine batch limit (default 32)")
    b.add_argument("--batch-wait-ms", type=float, help="engine batch budget (default 0 CPU / 4 ms CUDA)")
    b.add_argument("--flow-threads", type=int, help="threads for the flow (default half the cores)")
    b.add_argument("--model-threads", type=int, help="threads for the model (default the other half)")
    b.add_argument("--http", metavar="URL", help="drive a running `amvad serve` at URL instead")
    b.add_argument("--camera-url", help="with --http: source URL for the cameras (e.g. rtsp://...)")
    b.add_argument("--api-key", help="with --http: the service's API key")
    b.add_argument("--soak-minutes", type=float, help="soak instead: --cameras live cameras at --rate (default 3) "
                   "frames/s for this long with events, clips and a webhook on; RSS over time, drops, latency")
    b.add_argument("--json", type=Path, help="write the report here")
    b.set_defaults(func=_bench)
    for sp in (t, fi, e, f, b):
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
    add_backup_parsers(sub)
    add_robustness_parsers(sub)
    add_user_parsers(sub)
    add_tls_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit status 2 for bad arguments or inputs, 1 when the service cannot start."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)  # argparse only: --help and usage errors stay fast
    args.argv = argv
    try:
        args.func(args)
    except CommandFailed as exc:
        print(f"amvad {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        print(f"amvad {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
