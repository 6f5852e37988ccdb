"""``amvad backup`` and ``amvad restore``: the state directory that ``amvad serve`` would use (the same
settings: ``--config``, ``AMVAD_*``, ``--state-dir``) to a tar.gz archive and back (service/backup.py).
A backup works while the service runs. Parsing imports nothing heavy; the commands import the service
when they run. Progress goes to stderr, the summary (JSON) to stdout."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _settings(args: argparse.Namespace):
    from amvad.service.config import load_settings
    return load_settings(args.config, state_dir=args.state_dir)


class _Printer:
    """Progress lines on stderr at most twice a second, and the last one always."""

    def __init__(self, verb: str, quiet: bool) -> None:
        self.verb, self.quiet, self._last, self._pending = verb, quiet, 0.0, None

    def __call__(self, p) -> None:
        self._pending = p
        if time.monotonic() - self._last >= 0.5:
            self._show()

    def _show(self) -> None:
        p, self._last = self._pending, time.monotonic()
        if self.quiet or p is None:
            return
        files = f"{p.files}" if p.total_files is None else f"{p.files}/{p.total_files}"
        mb = f"{p.bytes / 2**20:.1f}" if p.total_bytes is None else f"{p.bytes / 2**20:.1f}/{p.total_bytes / 2**20:.1f}"
        print(f"{self.verb}: {files} files, {mb} MB", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self._pending is not None:
            self._show()


def _backup(args: argparse.Namespace) -> None:
    from amvad.runtime.errors import AmvadError
    from amvad.service.backup import backup_to_file, settings_as_config
    settings = _settings(args)
    show = _Printer("backup", args.quiet)
    try:
        manifest = backup_to_file(settings.paths, args.out, evidence=not args.no_evidence,
                                  config=settings_as_config(settings), progress=show)
    except AmvadError as exc:
        raise ValueError(exc.message) from None
    show.done()
    members = manifest["members"].values()
    print(json.dumps({"archive": str(args.out), "state_dir": str(settings.state_dir), "files": len(members),
                      "bytes": sum(m["bytes"] for m in members), "evidence": manifest["evidence"],
                      "contents": manifest["contents"]}, indent=1))


def _restore(args: argparse.Namespace) -> None:
    from amvad.runtime.errors import AmvadError
    from amvad.service.backup import restore
    settings = _settings(args)
    show = _Printer("restore", args.quiet)
    try:
        res = restore(args.archive, settings.state_dir, progress=show)
    except AmvadError as exc:
        raise ValueError(exc.message) from None
    show.done()
    print(json.dumps(res, indent=1))
    if res["config"]:
        print(f"restored; start the service with: amvad serve --config {res['config']}", file=sys.stderr)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``backup`` and ``restore`` subcommands (called by cli/main.py's ``build_parser``)."""
    b = sub.add_parser("backup", help="archive the service's state (cameras, webhooks, models, statistics, "
                       "events, evidence) while it runs")
    b.add_argument("--out", required=True, type=Path, help="the archive to write (.tar.gz, mode 0600)")
    b.add_argument("--no-evidence", action="store_true", help="leave out event clips and snapshots")
    r = sub.add_parser("restore", help="unpack a backup into an empty state directory")
    r.add_argument("archive", type=Path, help="an archive made by amvad backup or GET /v1/backup")
    for p, func in ((b, _backup), (r, _restore)):
        p.add_argument("--config", type=Path, help="YAML service config, as for amvad serve (its state_dir)")
        p.add_argument("--state-dir", type=Path, help="the state directory (default: the config's)")
        p.add_argument("--quiet", action="store_true", help="no progress on stderr")
        p.set_defaults(func=func)
