"""Reconciliation as a library: the settings it reads, one run of every check (services/reconcile/checks.py) over
the three databases, and its report. `coinstream reconcile` (__main__) prints it; payouts can run it periodically
(periodic.py); the test suite ends with it (tests/support/invariants.py)."""

from __future__ import annotations

import dataclasses
import json
import ssl
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import nats
from nats.errors import Error as NatsError
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.payouts.dead_letters import list_dead_letters
from services.reconcile import checks
from services.reconcile.checks import Discrepancy, Thresholds
from services.runtime import tls
from services.runtime.messaging import server_urls
from services.runtime.nats_login import ANONYMOUS, NatsLogin, read_nats_login


class ReconcileSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COINSTREAM_", extra="ignore", hide_input_in_errors=True)

    wallet_database_url: str = "postgresql://postgres@127.0.0.1:55432/coinstream_wallet"
    gifts_database_url: str = "postgresql://postgres@127.0.0.1:55432/coinstream_gifts"
    payouts_database_url: str = "postgresql://postgres@127.0.0.1:55432/coinstream_payouts"
    nats_url: str = "nats://127.0.0.1:4222"
    # TLS to NATS, as the services have it (COINSTREAM_NATS_TLS_*: the CA, and a client certificate for mutual TLS).
    nats_tls_ca_file: str = ""
    nats_tls_cert_file: str = ""
    nats_tls_key_file: str = ""

    def nats_tls(self) -> ssl.SSLContext | None:
        return tls.nats_ssl_context(self)  # as the services connect

    # The NATS login that reads DEAD_LETTERS, as for the services (RuntimeSettings): payouts' own when payouts runs
    # the checks, an operator's for `coinstream reconcile`.
    nats_user: str = ""
    nats_password: SecretStr = SecretStr("")
    nats_password_file: str = ""

    def nats_login(self) -> NatsLogin:
        return read_nats_login(self.nats_user, self.nats_password, self.nats_password_file)

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
    dead_lettered_gifts: list[str] = field(default_factory=list)  # for an operator: `coinstream dead-letters`
    dead_letters_unknown: bool = False  # NATS could not be read (down, or refusing the login)

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
        if self.dead_lettered_gifts:
            lines.append(
                f"  {len(self.dead_lettered_gifts)} gifts dead-lettered, to replay: coinstream dead-letters list"
            )
        if self.dead_letters_unknown:
            lines.append(
                "  (NATS unreachable or refusing the login: dead letters unknown, so their gifts count as never "
                "settled)"
            )
        return "\n".join(lines)


DEAD_LETTERS_READ_LIMIT = 10_000
NATS_CONNECT_TIMEOUT_SECONDS = 2.0


async def dead_lettered_gifts(
    nats_url: str, login: NatsLogin = ANONYMOUS, nats_tls: ssl.SSLContext | None = None
) -> frozenset[str] | None:
    """The gifts whose GiftSent waits in DEAD_LETTERS (the oldest 10,000), or None when NATS cannot be read (down,
    or refusing the login)."""

    async def quiet(error: Exception) -> None:
        """The outcome is reported (dead letters unknown); no traceback per failed attempt."""

    try:
        # Two attempts at most: nats-py otherwise retries a refused first connect 60 times.
        nc = await nats.connect(
            servers=server_urls(nats_url),
            **login.connect_options(),
            connect_timeout=NATS_CONNECT_TIMEOUT_SECONDS,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            error_cb=quiet,
            tls=nats_tls,
            tls_handshake_first=nats_tls is not None,  # as the services connect (messaging.connect)
        )
    except (NatsError, OSError, TimeoutError):
        return None
    try:
        letters = await list_dead_letters(nc.jetstream(), limit=DEAD_LETTERS_READ_LIMIT)
    except NatsError:
        return None
    finally:
        await nc.close()
    return frozenset(letter.gift_transaction_id for letter in letters if letter.gift_transaction_id)


async def reconcile(
    urls: dict[str, str], thresholds: Thresholds, dead_lettered: frozenset[str] | None = frozenset()
) -> Report:
    """Every identity, read in one repeatable-read snapshot per database (the databases differ, so the checks
    across them allow for work in flight: pending gifts, the settlement grace). dead_lettered: the gifts whose
    event is in DEAD_LETTERS (None: unknown)."""
    async with AsyncExitStack() as opened:
        connections: dict[str, asyncpg.Connection] = {}
        for name, url in urls.items():  # each closed on the way out, also when a later one cannot connect
            connections[name] = await asyncpg.connect(url)
            opened.push_async_callback(connections[name].close)
        return await _check_all(connections, thresholds, dead_lettered)


async def _check_all(
    connections: dict[str, asyncpg.Connection], thresholds: Thresholds, dead_lettered: frozenset[str] | None
) -> Report:
    for connection in connections.values():
        await connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    wallet, gifts, payouts = connections["wallet"], connections["gifts"], connections["payouts"]
    report = Report(checked_at=datetime.now(UTC).isoformat(), dead_letters_unknown=dead_lettered is None)
    completed = await checks.completed_gifts(gifts, thresholds)
    settled, report.gifts_awaiting_settlement, report.dead_lettered_gifts = await checks.settlement(
        payouts, completed, dead_lettered or frozenset()
    )
    report.discrepancies = [
        *await checks.wallet_ledger(wallet),
        *await checks.wallet_funding(wallet),
        *await checks.gift_payments(wallet, gifts, completed, thresholds),
        *await checks.reversal_clawbacks(wallet, payouts, thresholds),
        *settled,
        *await checks.credits_without_gifts(gifts, payouts, completed, thresholds),
        *await checks.payouts_ledger(payouts),
        *await checks.stuck_work(connections, thresholds),
    ]
    return report


async def run(settings: ReconcileSettings, thresholds: Thresholds) -> Report:
    dead_lettered = await dead_lettered_gifts(settings.nats_url, settings.nats_login(), settings.nats_tls())
    return await reconcile(settings.urls(), thresholds, dead_lettered)
