"""``amvad user``: the users of the state directory that ``amvad serve`` would use (the same settings:
``--config``, ``AMVAD_*``, ``--state-dir``), while it runs or not: a running service reloads the users file
when it changes. Parsing imports nothing heavy; the commands import the service when they run."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

ROLES = ("viewer", "admin")


def _store(args: argparse.Namespace):
    from amvad.service.config import load_settings
    from amvad.service.users import UserStore
    return UserStore(load_settings(args.config, state_dir=args.state_dir).paths.users)


def _read_password(args: argparse.Namespace, name: str) -> str:
    """One line from stdin with ``--password-stdin``; else typed twice at a prompt (never an argument: argv
    is visible to every user of the machine)."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise ValueError("--password-stdin: no password on standard input")
        return password
    if not sys.stdin.isatty():
        raise ValueError("no terminal to ask for the password: pipe it in with --password-stdin")
    password = getpass.getpass(f"password for {name}: ")
    if getpass.getpass("again: ") != password:
        raise ValueError("the two passwords differ")
    return password


def _run(func, args: argparse.Namespace) -> None:
    from amvad.runtime.errors import AmvadError
    try:
        func(args)
    except AmvadError as exc:
        raise ValueError(exc.message) from None


def _warn_without_admin(store) -> None:
    if store.any() and not any(u.role == "admin" for u in store.list()):
        print("warning: no user is an admin now; only the api_key setting (if any) can manage the service",
              file=sys.stderr)


def _add(args: argparse.Namespace) -> None:
    store = _store(args)
    password = None if args.no_password else _read_password(args, args.name)
    user = store.add(args.name, args.role, password)
    print(json.dumps(user.public(), indent=1))
    _warn_without_admin(store)


def _list(args: argparse.Namespace) -> None:
    print(json.dumps([u.public() for u in _store(args).list()], indent=1))


def _remove(args: argparse.Namespace) -> None:
    store = _store(args)
    store.remove(args.name)
    print(json.dumps({"deleted": args.name}))
    if not store.any():
        print("no users left: without api_key the service is open again (to whoever can reach it)", file=sys.stderr)
    _warn_without_admin(store)


def _set_role(args: argparse.Namespace) -> None:
    store = _store(args)
    print(json.dumps(store.set_role(args.name, args.role).public(), indent=1))
    _warn_without_admin(store)


def _passwd(args: argparse.Namespace) -> None:
    store = _store(args)
    store.get(args.name)
    print(json.dumps(store.set_password(args.name, _read_password(args, args.name)).public(), indent=1))


def _key(args: argparse.Namespace) -> None:
    key, secret = _store(args).add_key(args.name, args.label)
    print(json.dumps({**key.public(), "user": args.name, "key": secret}, indent=1))
    print("the key is shown this once; only its hash is kept", file=sys.stderr)


def _revoke(args: argparse.Namespace) -> None:
    _store(args).remove_key(args.name, args.key_id)
    print(json.dumps({"deleted": args.key_id}))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``user`` command and its subcommands (called by cli/main.py's ``build_parser``)."""
    u = sub.add_parser("user", help="users, roles (viewer, admin), passwords and API keys of the service")
    usub = u.add_subparsers(dest="user_command", required=True, metavar="{add,list,remove,set-role,passwd,key,"
                            "revoke-key}")
    a = usub.add_parser("add", help="add a user (the password is asked for, or read with --password-stdin)")
    a.add_argument("name")
    a.add_argument("--role", choices=ROLES, required=True)
    a.add_argument("--no-password", action="store_true", help="a user for machines: API keys only, no login")
    ls = usub.add_parser("list", help="every user, role and API key id (never a secret)")
    r = usub.add_parser("remove", help="remove a user (their API keys too)")
    r.add_argument("name")
    sr = usub.add_parser("set-role", help="give a user another role")
    sr.add_argument("name")
    sr.add_argument("role", choices=ROLES)
    pw = usub.add_parser("passwd", help="set a user's password")
    pw.add_argument("name")
    k = usub.add_parser("key", help="a new API key of a user (printed once)")
    k.add_argument("name")
    k.add_argument("--label", default="", help="what the key is for (a machine's name)")
    rk = usub.add_parser("revoke-key", help="revoke one of a user's API keys (its id from list)")
    rk.add_argument("name")
    rk.add_argument("key_id")
    for p in (a, pw):
        p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    for p, func in ((a, _add), (ls, _list), (r, _remove), (sr, _set_role), (pw, _passwd), (k, _key), (rk, _revoke)):
        p.add_argument("--config", type=Path, help="YAML service config, as for amvad serve (its state_dir)")
        p.add_argument("--state-dir", type=Path, help="the state directory (default: the config's)")
        p.set_defaults(func=lambda args, func=func: _run(func, args))
