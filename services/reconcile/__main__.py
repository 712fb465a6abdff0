"""python -m services.reconcile [--json] — checks the money identities across the wallet, gifts and payouts
databases and exits 1 with a report of each discrepancy (0 when there is none, 2 when a database is unreachable).

The databases come from the services' own settings (COINSTREAM_{WALLET,GIFTS,PAYOUTS}_DATABASE_URL; the defaults are
`make run`'s). Read-only: run it against replicas or the primaries at any time. Gifts whose GiftSent is in the
DEAD_LETTERS stream (COINSTREAM_NATS_URL, read as COINSTREAM_NATS_USER: an operator) are listed as dead-lettered
rather than as never settled; when NATS cannot be read the report says so, and such gifts count as discrepancies."""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from services.reconcile.checks import Thresholds
from services.reconcile.reconciler import ReconcileSettings, run
from services.runtime.nats_login import NatsLoginError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coinstream reconcile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--settlement-grace-seconds",
        type=float,
        default=Thresholds.settlement_grace_seconds,
        help="a completed gift younger than this may still be on its way to payouts, and a credit younger than this"
        " may be of a gift completed after gifts' database was read (default %(default)s)",
    )
    parser.add_argument(
        "--stuck-after-seconds",
        type=float,
        default=Thresholds.stuck_after_seconds,
        help="pending gifts, purchases and withdrawals older than this are reported (default %(default)s)",
    )
    args = parser.parse_args(argv)
    thresholds = Thresholds(args.settlement_grace_seconds, args.stuck_after_seconds)
    try:
        report = asyncio.run(run(ReconcileSettings(), thresholds))
    except (OSError, asyncpg.PostgresError) as error:
        print(f"coinstream reconcile: cannot read the databases: {error}", file=sys.stderr)
        return 2
    except NatsLoginError as error:
        print(f"coinstream reconcile: {error}", file=sys.stderr)
        return 2
    print(report.as_json() if args.json else report.as_text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
