"""The `coinstream` command: dev tokens, a scripted demo against the running stack, a health check, the
reconciliation of the three ledgers (services/reconcile), and the dead letters of settlement."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import nats
import nats.errors
import typer
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from coinstream.client import Addresses
from devstack.demo import DEFAULT_MATCH_SECONDS, DEFAULT_WITHDRAWAL_DIAMONDS, DemoError, run_demo
from services.payouts import dead_letters as dead_letter_store
from services.reconcile import __main__ as reconcile_command
from services.reconcile.checks import Thresholds
from services.reconcile.reconciler import ReconcileSettings
from services.runtime.auth import KNOWN_ROLES, ROLE_USER, mint_token
from services.runtime.config import DEV_AUTH_SECRET
from services.runtime.messaging import server_urls
from services.runtime.nats_login import (
    PASSWORD_FILE_SETTING,
    PASSWORD_SETTING,
    USER_SETTING,
    NatsLogin,
    NatsLoginError,
    read_nats_login,
)
from services.runtime.nats_permissions import USERS as NATS_USERS
from services.runtime.nats_permissions import (
    UnsafePasswordError,
    environment_variable_for,
    literal_password,
    password_from_environment,
    render_authorization,
)
from services.runtime.probe import health_status
from services.runtime.supervision import WORKERS_HEALTH_NAME

app = typer.Typer(
    name="coinstream",
    help="coinstream tools: dev tokens, a demo live stream, the services' health, reconciling the ledgers.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
T = TypeVar("T")
error_console = Console(stderr=True)

SecretOption = Annotated[
    str | None,
    typer.Option(
        "--secret",
        envvar="COINSTREAM_AUTH_SECRET",
        show_default=False,
        help="HS256 signing secret (default: $COINSTREAM_AUTH_SECRET, else the dev default the services use).",
    ),
]
WalletAddress = Annotated[str, typer.Option("--wallet", help="WalletService address.")]
GiftsAddress = Annotated[str, typer.Option("--gifts", help="GiftService address.")]
PayoutsAddress = Annotated[str, typer.Option("--payouts", help="PayoutService address.")]


@app.command()
def token(
    sub: Annotated[str, typer.Option("--sub", help="Subject: the account the token acts as.")] = "alice",
    role: Annotated[
        list[str], typer.Option("--role", help=f"Role, repeatable: one of {', '.join(sorted(KNOWN_ROLES))}.")
    ] = [ROLE_USER],  # noqa: B006 - typer needs the literal default to show it in --help
    ttl_seconds: Annotated[int, typer.Option("--ttl-seconds", min=1, help="Lifetime of the token.")] = 3600,
    secret: SecretOption = None,
) -> None:
    """Print a signed dev JWT, e.g. for grpcurl: -H "authorization: Bearer $(coinstream token)"."""
    unknown = sorted(set(role) - KNOWN_ROLES)
    if unknown:
        raise typer.BadParameter(f"unknown role(s) {unknown}; use {sorted(KNOWN_ROLES)}", param_hint="--role")
    # Plain echo, not rich: the token must come out as one unwrapped line for $(...).
    typer.echo(mint_token(secret or DEV_AUTH_SECRET, sub, list(dict.fromkeys(role)), ttl_seconds))


@app.command()
def demo(
    wallet: WalletAddress = "127.0.0.1:50051",
    gifts: GiftsAddress = "127.0.0.1:50052",
    payouts: PayoutsAddress = "127.0.0.1:50053",
    withdraw_diamonds: Annotated[
        int, typer.Option("--withdraw-diamonds", min=1, help="Diamonds the creator withdraws at the end.")
    ] = DEFAULT_WITHDRAWAL_DIAMONDS,
    match_seconds: Annotated[
        float,
        typer.Option("--match-seconds", min=1, help="How long the match lasts (the server allows 30 s to 60 min)."),
    ] = DEFAULT_MATCH_SECONDS,
    secret: SecretOption = None,
) -> None:
    """Run a short scripted live stream against the running stack (start it with `make run`): gifts, a goal, a video
    gift, a match (it lasts a minute) and a withdrawal."""
    addresses = Addresses(wallet=wallet, gifts=gifts, payouts=payouts)
    try:
        run_demo(
            addresses,
            secret or DEV_AUTH_SECRET,
            console,
            withdrawal_diamonds=withdraw_diamonds,
            match_seconds=match_seconds,
        )
    except DemoError as error:
        error_console.print(f"[bold red]demo failed:[/] {error}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        error_console.print("[yellow]demo interrupted[/]")
        raise typer.Exit(130) from None
    console.print("[bold green]Demo complete.[/]")


@app.command()
def health(
    wallet: WalletAddress = "127.0.0.1:50051",
    gifts: GiftsAddress = "127.0.0.1:50052",
    payouts: PayoutsAddress = "127.0.0.1:50053",
    timeout_seconds: Annotated[float, typer.Option("--timeout-seconds", help="Per-service timeout.")] = 2.0,
) -> None:
    """Check the services' grpc.health.v1 status and their background workers'; exits 1 unless all are SERVING."""
    table = Table("service", "address", "status", "workers", title="coinstream health")
    all_serving = True
    for name, address in Addresses(wallet, gifts, payouts).by_service().items():
        status = health_status(address, timeout_seconds=timeout_seconds)
        workers = health_status(address, WORKERS_HEALTH_NAME, timeout_seconds) if status != "UNREACHABLE" else "-"
        all_serving &= status == "SERVING" and workers == "SERVING"
        table.add_row(name, address, _colored(status), _colored(workers))
    console.print(table)
    if not all_serving:
        raise typer.Exit(1)


def _colored(status: str) -> str:
    return f"[green]{status}[/]" if status == "SERVING" else f"[red]{status}[/]"


@app.command()
def reconcile(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    settlement_grace_seconds: Annotated[
        float, typer.Option("--settlement-grace-seconds", help="A younger completed gift or credit may be in flight.")
    ] = Thresholds.settlement_grace_seconds,
    stuck_after_seconds: Annotated[
        float, typer.Option("--stuck-after-seconds", help="Older pending gifts, purchases, withdrawals are stuck.")
    ] = Thresholds.stuck_after_seconds,
) -> None:
    """Check the money identities across the three databases (COINSTREAM_*_DATABASE_URL, default `make run`'s);
    exits 1 with a report of each discrepancy, 2 when a database is unreachable."""
    args = [
        "--settlement-grace-seconds",
        str(settlement_grace_seconds),
        "--stuck-after-seconds",
        str(stuck_after_seconds),
    ]
    raise typer.Exit(reconcile_command.main([*args, "--json"] if as_json else args))


dead_letters_app = typer.Typer(
    help="GiftSent events settlement could not process: list them, and replay one once its cause is fixed.",
    no_args_is_help=True,
)
app.add_typer(dead_letters_app, name="dead-letters")
NatsUrl = Annotated[
    str, typer.Option("--nats", envvar="COINSTREAM_NATS_URL", help="NATS server (default: $COINSTREAM_NATS_URL).")
]
NatsUser = Annotated[
    str,
    typer.Option(
        "--nats-user",
        envvar=USER_SETTING,
        help=f"NATS user with the operator's rights (default: ${USER_SETTING}; `make run` prints it).",
    ),
]
# No option for the password itself: a command line is visible to every user of the machine (ps).
NatsPasswordFile = Annotated[
    str,
    typer.Option(
        "--nats-password-file",
        envvar=PASSWORD_FILE_SETTING,
        help=f"File holding the NATS user's password (default: ${PASSWORD_FILE_SETTING}, else ${PASSWORD_SETTING}).",
    ),
]


def _nats_login(user: str, password_file: str) -> NatsLogin:
    try:
        return read_nats_login(user, SecretStr(os.environ.get(PASSWORD_SETTING, "")), password_file)
    except NatsLoginError as error:
        error_console.print(f"[bold red]{error}[/]")
        raise typer.Exit(2) from None


async def _with_jetstream(nats_url: str, login: NatsLogin, work: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    async def reported_below(error: Exception) -> None:
        """nats-py would print a traceback for a refused connection; the message below says what to do."""

    nats_tls = ReconcileSettings().nats_tls()
    try:
        nc = await nats.connect(
            servers=server_urls(nats_url),
            **login.connect_options(),
            connect_timeout=5,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            error_cb=reported_below,
            tls=nats_tls,  # COINSTREAM_NATS_TLS_*, as the services have them
            tls_handshake_first=nats_tls is not None,
        )
    except nats.errors.Error as error:
        if "authorization violation" not in str(error).lower():
            raise
        who = f"user {login.user!r}" if login.user else "an anonymous client"
        error_console.print(
            f"[bold red]NATS refused {who}[/]: give the operator's --nats-user and --nats-password-file "
            f"(or ${USER_SETTING} and ${PASSWORD_FILE_SETTING})"
        )
        raise typer.Exit(2) from None
    try:
        return await work(nc.jetstream())
    finally:
        await nc.close()


@dead_letters_app.command("list")
def list_dead_letters(
    nats_url: NatsUrl = "nats://127.0.0.1:4222",
    nats_user: NatsUser = "",
    nats_password_file: NatsPasswordFile = "",
    limit: Annotated[int, typer.Option("--limit", min=1, max=dead_letter_store.MAX_LISTED)] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per dead letter.")] = False,
) -> None:
    """The oldest dead letters first: ID (to replay), gift, deliveries, when, and why."""
    login = _nats_login(nats_user, nats_password_file)
    letters = asyncio.run(_with_jetstream(nats_url, login, lambda js: dead_letter_store.list_dead_letters(js, limit)))
    if as_json:
        for letter in letters:
            typer.echo(json.dumps({**_describe(letter), "payload_base64": base64.b64encode(letter.payload).decode()}))
        return
    table = Table("ID", "gift", "deliveries", "dead-lettered at", "reason", title=f"{len(letters)} dead letters")
    for letter in letters:
        row = _describe(letter)
        table.add_row(
            str(row["id"]),
            str(row["gift_transaction_id"] or "(unreadable)"),
            str(row["deliveries"]),
            str(row["dead_lettered_at"]),
            str(row["reason"]),
        )
    console.print(table)


@dead_letters_app.command("replay")
def replay_dead_letter(
    dead_letter_id: Annotated[int, typer.Argument(help="The ID `coinstream dead-letters list` shows.", min=1)],
    nats_url: NatsUrl = "nats://127.0.0.1:4222",
    nats_user: NatsUser = "",
    nats_password_file: NatsPasswordFile = "",
) -> None:
    """Publish the event again to its original subject and remove the dead letter. Settlement credits a gift once,
    however often it is replayed; an event that still cannot be settled comes back as a new dead letter."""
    login = _nats_login(nats_user, nats_password_file)
    try:
        letter = asyncio.run(_with_jetstream(nats_url, login, lambda js: dead_letter_store.replay(js, dead_letter_id)))
    except NotFoundError:
        error_console.print(f"[bold red]no dead letter {dead_letter_id}[/] (replayed already, or never there)")
        raise typer.Exit(1) from None
    console.print(f"replayed dead letter {dead_letter_id} (gift {letter.gift_transaction_id or 'unreadable'})")


@app.command("nats-config")
def nats_config(
    password_env: Annotated[
        bool,
        typer.Option(
            "--password-env",
            help="Refer to each password as an environment variable of nats-server ($NATS_<USER>_PASSWORD): the "
            "output holds no secret.",
        ),
    ] = False,
    passwords_dir: Annotated[
        Path | None,
        typer.Option(
            "--passwords-dir",
            help="Write the passwords in: one file per user, named after it (e.g. a mounted Secret, or make run's "
            ".data/nats-credentials).",
        ),
    ] = None,
) -> None:
    """Print the nats-server `authorization` block: a user per service with only the subjects it needs, an operator
    user, and no stream deletion or purge for anyone (services/runtime/nats_permissions.py)."""
    if password_env == (passwords_dir is not None):
        raise typer.BadParameter("give either --password-env or --passwords-dir")
    if password_env:
        passwords = {user: password_from_environment(environment_variable_for(user)) for user in NATS_USERS}
    else:
        assert passwords_dir is not None
        passwords = {user: _password_from(passwords_dir / user) for user in NATS_USERS}
    typer.echo(render_authorization(passwords), nl=False)


def _password_from(path: Path) -> str:
    try:
        return literal_password(path.read_text(encoding="utf-8").strip())
    except OSError as error:
        raise typer.BadParameter(f"cannot read {path}: {error.strerror}", param_hint="--passwords-dir") from None
    except (UnicodeDecodeError, UnsafePasswordError) as error:
        # Never the value itself in the message.
        reason = error if isinstance(error, UnsafePasswordError) else "not UTF-8 text"
        raise typer.BadParameter(f"{path}: {reason}", param_hint="--passwords-dir") from None


def _describe(letter: dead_letter_store.DeadLetter) -> dict[str, object]:
    return {
        "id": letter.sequence,
        "gift_transaction_id": letter.gift_transaction_id,
        "deliveries": letter.deliveries,
        "dead_lettered_at": letter.dead_lettered_at.isoformat() if letter.dead_lettered_at else "",
        "reason": letter.reason,
        "original_subject": letter.original_subject,
        "original_sequence": letter.original_sequence,
        "original_msg_id": letter.original_msg_id,
    }


if __name__ == "__main__":
    app()
