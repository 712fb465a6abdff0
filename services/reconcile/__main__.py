"""python -m services.reconcile [--json] — checks the money identities across the wallet, gifts and payouts
databases and exits 1 with a report of each discrepancy (0 when there is none, 2 when a database is unreachable).

The databases come from the services' own settings (COINSTREAM_{WALLET,GIFTS,PAYOUTS}_DATABASE_URL; the defaults are
`make run`'s). Read-only: run it against replicas or the primaries at any time."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.reconcile import checks
from services.reconcile.checks import Discrepancy, Thresholds


class ReconcileSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COINSTREAM_", extra="ignore")

    wallet_database_url: str = "postgresql://postgres@127.0.0.1:55432/coinstream_wallet"
    gifts_database_url: str = "postgresql://postgres@127.0.0.1:55432/coinstream_gifts"
    payouts_database_url: str = "postgresql://postgres@127.0.0.1:55432/coinstream_payouts"

    def urls(self) -> dict[str, str]:
        return {
            "wallet": self.wallet_database_url,
            "gifts": self.gifts_database_url,
            "payouts": self.payouts_database_url,
        }


@dataclass
class Report:
    checked_at: str
    discrepancies: list[Discrepancy] = field(default_factory=list)
    gifts_awaiting_settlement: int = 0  # completed within the settlement grace, not yet credited

    @property
    def ok(self) -> bool:
        return not self.discrepancies

    def as_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "ok": self.ok}, indent=2)

    def as_text(self) -> str:
        lines = [f"coinstream reconcile at {self.checked_at}: {len(self.discrepancies)} discrepancies"]
        lines += [f"  {d.check:<15} {d.subject}: {d.detail}" for d in self.discrepancies]
        if self.gifts_awaiting_settlement:
            lines.append(f"  ({self.gifts_awaiting_settlement} gifts completed within the grace, not settled yet)")
        return "\n".join(lines)


async def reconcile(urls: dict[str, str], thresholds: Thresholds) -> Report:
    """Every identity, read in one repeatable-read snapshot per database (the databases differ, so the checks
    across them allow for work in flight: pending gifts, the settlement grace)."""
    connections = {name: await asyncpg.connect(url) for name, url in urls.items()}
    try:
        for connection in connections.values():
            await connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        wallet, gifts, payouts = connections["wallet"], connections["gifts"], connections["payouts"]
        report = Report(checked_at=datetime.now(UTC).isoformat())
        settled, report.gifts_awaiting_settlement = await checks.settlement(gifts, payouts, thresholds)
        report.discrepancies = [
            *await checks.wallet_ledger(wallet),
            *await checks.gift_payments(wallet, gifts),
            *settled,
            *await checks.payouts_ledger(payouts),
            *await checks.stuck_work(connections, thresholds),
        ]
        return report
    finally:
        for connection in connections.values():
            await connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coinstream reconcile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--settlement-grace-seconds",
        type=float,
        default=Thresholds.settlement_grace_seconds,
        help="a completed gift younger than this may still be on its way to payouts (default %(default)s)",
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
        report = asyncio.run(reconcile(ReconcileSettings().urls(), thresholds))
    except (OSError, asyncpg.PostgresError) as error:
        print(f"coinstream reconcile: cannot read the databases: {error}", file=sys.stderr)
        return 2
    print(report.as_json() if args.json else report.as_text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
