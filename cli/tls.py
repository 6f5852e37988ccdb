"""``amvad tls self-signed``: a certificate and key for ``amvad serve --tls-cert/--tls-key`` on a LAN box
(service/tls.py; made with the ``cryptography`` package, no ``openssl`` command needed)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _self_signed(args: argparse.Namespace) -> None:
    from amvad.runtime.errors import AmvadError
    from amvad.service.tls import self_signed
    try:
        made = self_signed(args.out, args.host, days=args.days, force=args.force)
    except AmvadError as exc:
        raise ValueError(exc.message) from None
    print(json.dumps({"cert": str(made.cert), "key": str(made.key), "hosts": list(made.hosts),
                      "sha256": made.sha256, "not_after": made.not_after.isoformat()}, indent=1))
    print(f"serve with: amvad serve --tls-cert {made.cert} --tls-key {made.key} (browsers warn once about a "
          f"self-signed certificate: compare its SHA-256 fingerprint with the one above)", file=sys.stderr)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``tls`` command (called by cli/main.py's ``build_parser``)."""
    t = sub.add_parser("tls", help="TLS certificates for amvad serve (HTTPS and WSS)")
    tsub = t.add_subparsers(dest="tls_command", required=True, metavar="{self-signed}")
    s = tsub.add_parser("self-signed", help="write a self-signed cert.pem and key.pem (0600) for this machine")
    s.add_argument("--out", type=Path, required=True, help="the folder to write cert.pem and key.pem to")
    s.add_argument("--host", action="append", help="a name or IP address clients use (repeat it); default: "
                   "localhost, 127.0.0.1, ::1 and this machine's host name")
    s.add_argument("--days", type=int, default=825, help="how long it is valid (default 825)")
    s.add_argument("--force", action="store_true", help="replace an existing pair")
    s.set_defaults(func=_self_signed)
