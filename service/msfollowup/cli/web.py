"""`msfollowup user ...` and `msfollowup token ...`: web accounts and API tokens.

Passwords are read from stdin (never an argument: it would show in `ps` and shell history).
"""

from __future__ import annotations

import argparse
import sys

from msfollowup.site.config import load_config


def _db(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from msfollowup.db import Database

    cfg = load_config(getattr(args, "config", None))
    if cfg.storage.database is None:
        cfg.storage.data_dir.mkdir(parents=True, exist_ok=True)
    return Database(cfg.storage.database_url)


def _author() -> str:
    from msfollowup.app.plans import default_author

    return f"cli:{default_author()}"


def _user_add(args: argparse.Namespace) -> int:
    from msfollowup.app.accounts import AccountError, add_user

    if not args.password_stdin:
        print("msfollowup: give the password on stdin with --password-stdin", file=sys.stderr)
        return 2
    password = sys.stdin.readline().rstrip("\r\n")
    try:
        with _db(args).session() as s:
            add_user(s, args.name, args.role, password, _author())
    except AccountError as exc:
        print(f"msfollowup: {exc}", file=sys.stderr)
        return 2
    print(f"user {args.name} ({args.role}) saved")
    return 0


def _user_list(args: argparse.Namespace) -> int:
    from msfollowup.app.accounts import list_users

    with _db(args).session() as s:
        for u in list_users(s):
            print(f"{u['name']:<32} {u['role']:<13} {'active' if u['active'] else 'disabled'}"
                  f"{'' if u['password'] else '  (tokens only)'}")
    return 0


def _token_create(args: argparse.Namespace) -> int:
    from msfollowup.app.accounts import AccountError, create_token

    try:
        with _db(args).session() as s:
            secret = create_token(s, args.name, args.role, _author(), station=args.station)
    except AccountError as exc:
        print(f"msfollowup: {exc}", file=sys.stderr)
        return 2
    print(secret)  # shown once; only its SHA-256 is stored
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from msfollowup.app.accounts import AccountError, revoke_tokens

    try:
        with _db(args).session() as s:
            n = revoke_tokens(s, args.name, _author())
    except AccountError as exc:
        print(f"msfollowup: {exc}", file=sys.stderr)
        return 2
    print(f"{n} token(s) of {args.name} revoked")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from msfollowup.app.accounts import ROLES

    user = sub.add_parser("user", help="web users (roles: " + ", ".join(ROLES) + ")").add_subparsers(
        dest="user_command", required=True)
    p = user.add_parser("add", help="create a user or set its role and password")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--password-stdin", action="store_true", help="read the password (12+ characters) from stdin")
    p.set_defaults(func=_user_add)
    q = user.add_parser("list", help="users and roles")
    q.set_defaults(func=_user_list)
    token = sub.add_parser("token", help="API tokens (Authorization: Bearer)").add_subparsers(
        dest="token_command", required=True)
    t = token.add_parser("create", help="print a new API token for NAME (stored hashed)")
    t.add_argument("name")
    t.add_argument("--role", required=True, choices=ROLES)
    t.add_argument("--station", help="kiosk tokens: the scanner (calling AE title or station name) whose live "
                                     "panel the screen shows; enter the token once at http://HOST/kiosk")
    t.set_defaults(func=_token_create)
    r = token.add_parser("revoke", help="revoke every token of NAME")
    r.add_argument("name")
    r.set_defaults(func=_token_revoke)
    for x in (p, q, t, r):
        x.add_argument("--config", help="TOML configuration file (default: $MSFOLLOWUP_CONFIG, else built-in defaults)")
