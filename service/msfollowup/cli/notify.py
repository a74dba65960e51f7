"""`msfollowup notifications`: the notification deliveries (event, destination, state, attempts, error)."""

from __future__ import annotations

import argparse
import json
import sys

from msfollowup.site.config import load_config
from msfollowup.db import Database
from msfollowup.db.notifications import STATES


def _cmd_notifications(args: argparse.Namespace) -> int:
    from msfollowup.app.notify.worker import list_deliveries

    cfg = load_config(args.config)
    if cfg.storage.database is None:
        cfg.storage.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(cfg.storage.database_url)
    try:
        rows = list_deliveries(db, args.state, args.limit)
    finally:
        db.dispose()
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not rows:
        print("no notification deliveries")
        return 0
    print(f"{'ID':>6}  {'EVENT':<20}  {'STATE':<9}  {'TRIES':>5}  {'DESTINATION':<40}  LAST ERROR / DELIVERED")
    for r in rows:
        tail = r["delivered_at"] or r["last_error"] or (f"next {r['next_attempt_at']}" if r["next_attempt_at"] else "")
        print(f"{r['id']:>6}  {r['event']:<20}  {r['state']:<9}  {r['attempts']:>5}  {r['destination'][:40]:<40}  {tail}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("notifications", help="list notification deliveries (webhook/e-mail): state, attempts, error")
    p.add_argument("--state", choices=STATES, help="only deliveries in this state")
    p.add_argument("--limit", type=int, default=200, help="newest N (default 200)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--config", help="TOML configuration file (default: $MSFOLLOWUP_CONFIG, else built-in defaults)")
    p.set_defaults(func=_cmd_notifications)
