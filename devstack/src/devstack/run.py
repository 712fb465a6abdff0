"""`make run`: the whole stack in the foreground — embedded PostgreSQL and NATS JetStream (unless external URLs
are given), then the wallet, gifts and payouts services — until Ctrl-C / SIGTERM or until a child dies.

External servers: setting COINSTREAM_{WALLET,GIFTS,PAYOUTS}_DATABASE_URL or COINSTREAM_NATS_URL skips the
embedded server it replaces; the URL is passed through to the services unchanged."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console, Group
from rich.rule import Rule
from rich.text import Text

from coinstream.client import NotServingError, wait_until_serving
from coinstream.testing.nats_credentials import NatsCredentials
from coinstream.testing.servers import NatsServer, PostgresServer
from coinstream.testing.stack import REPO_ROOT
from services.runtime.nats_login import PASSWORD_FILE_SETTING, PASSWORD_SETTING, USER_SETTING
from services.runtime.nats_permissions import OPERATOR_USER

DATA_DIR = REPO_ROOT / ".data"
LOG_DIR = DATA_DIR / "logs"
# The development Stripe webhook signing secret (whsec_…, made at the first run, kept in .data/): the wallet's and
# payouts' /webhooks/stripe verify events with it once Stripe is their provider (COINSTREAM_PAYMENT_PROVIDER=stripe,
# COINSTREAM_PAYOUT_PROVIDER=stripe_connect); sign test events with it, or put `stripe listen`'s secret in it.
STRIPE_WEBHOOK_SECRET_FILE = DATA_DIR / "secrets" / "stripe-webhook-secret"
STRIPE_WEBHOOK_SECRET_SETTINGS = (
    "COINSTREAM_STRIPE_WEBHOOK_SECRET_FILE",
    "COINSTREAM_STRIPE_CONNECT_WEBHOOK_SECRET_FILE",
)
POSTGRES_PORT = 55432
NATS_PORT = 4222
RECONCILE_INTERVAL_SECONDS = 60
# The first run applies every migration and creates the JetStream stream, so allow more than a warm start needs.
SERVICE_READY_TIMEOUT_SECONDS = 120.0
# Services drain in-flight RPCs for COINSTREAM_SHUTDOWN_GRACE_SECONDS (10 s by default) before they exit.
SERVICE_STOP_TIMEOUT_SECONDS = 25.0
SUPERVISE_INTERVAL_SECONDS = 0.5

console = Console(highlight=False, soft_wrap=True)
_output_lock = threading.Lock()


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    default_port: int
    style: str
    default_http_port: int = 0  # the providers' notifications and webhooks (0: the service has no HTTP port)

    @property
    def module(self) -> str:
        return f"services.{self.name}"

    @property
    def database(self) -> str:
        return f"coinstream_{self.name}"

    @property
    def database_url_env(self) -> str:
        return f"COINSTREAM_{self.name.upper()}_DATABASE_URL"

    def port(self, environ: dict[str, str]) -> int:
        return int(environ.get(f"COINSTREAM_{self.name.upper()}_PORT", self.default_port))

    def address(self, environ: dict[str, str]) -> str:
        return f"127.0.0.1:{self.port(environ)}"

    def http_port(self, environ: dict[str, str]) -> int:
        return int(environ.get(f"COINSTREAM_{self.name.upper()}_HTTP_PORT", self.default_http_port))

    @property
    def log_path(self) -> Path:
        return LOG_DIR / f"{self.name}.log"


WALLET = ServiceSpec("wallet", 50051, "cyan", default_http_port=50061)
GIFTS = ServiceSpec("gifts", 50052, "magenta")
PAYOUTS = ServiceSpec("payouts", 50053, "green", default_http_port=50063)
SERVICES = (WALLET, GIFTS, PAYOUTS)
# What the HTTP ports serve once the rails are configured (development keeps the sandbox: health only).
HTTP_PATHS = {
    "wallet": ("/notifications/app-store", "/notifications/google-play", "/webhooks/stripe", "/healthz"),
    "payouts": ("/webhooks/stripe", "/webhooks/paypal", "/healthz"),
}


class ShutdownRequested(Exception):
    """Raised from the signal handler so that a Ctrl-C during startup unwinds like one during steady state."""


class StackError(Exception):
    """A failure to report in one line (plus details) rather than as a traceback."""


@dataclass
class StackPlan:
    """What to start and which URLs the services get, decided once from the environment."""

    environ: dict[str, str]
    database_urls: dict[str, str] = field(default_factory=dict)
    embedded_databases: list[str] = field(default_factory=list)
    nats_url: str = ""
    embedded_nats: bool = False
    # The embedded NATS's users (set once it started): each service gets its own login, the banner the operator's.
    nats_credentials: NatsCredentials | None = None

    @classmethod
    def from_environment(cls, environ: dict[str, str]) -> StackPlan:
        plan = cls(environ=environ)
        for spec in SERVICES:
            external_url = environ.get(spec.database_url_env)
            if external_url:
                plan.database_urls[spec.name] = external_url
            else:
                plan.database_urls[spec.name] = f"postgresql://postgres@127.0.0.1:{POSTGRES_PORT}/{spec.database}"
                plan.embedded_databases.append(spec.database)
        plan.nats_url = environ.get("COINSTREAM_NATS_URL") or f"nats://127.0.0.1:{NATS_PORT}"
        plan.embedded_nats = not environ.get("COINSTREAM_NATS_URL")
        return plan

    def service_environment(self, spec: ServiceSpec) -> dict[str, str]:
        env = dict(self.environ)
        if self.nats_credentials is not None:
            # Not the login of the shell (an operator's, exported for the CLI, say): the service's own, or none.
            for setting in (USER_SETTING, PASSWORD_SETTING, PASSWORD_FILE_SETTING):
                env.pop(setting, None)
            env.update(self.nats_credentials.service_environment(spec.name))
        env.setdefault("COINSTREAM_LOG_FORMAT", "console")
        # make run is development: plaintext on loopback, the sandbox providers, a secret anyone may read here.
        env["COINSTREAM_ENVIRONMENT"] = "development"
        env["PYTHONUNBUFFERED"] = "1"  # log lines reach the terminal as they happen, not when a pipe buffer fills
        env["COINSTREAM_NATS_URL"] = self.nats_url
        env[spec.database_url_env] = self.database_urls[spec.name]
        for setting in STRIPE_WEBHOOK_SECRET_SETTINGS:
            env.setdefault(setting, str(STRIPE_WEBHOOK_SECRET_FILE))
        if spec is GIFTS:
            env.setdefault("COINSTREAM_GIFTS_WALLET_ADDRESS", WALLET.address(self.environ))
        if spec is PAYOUTS:
            # Payouts reconciles the three ledgers every minute (coinstream_reconcile_discrepancies); it reads the
            # other two databases for that.
            env.update({other.database_url_env: self.database_urls[other.name] for other in (WALLET, GIFTS)})
            env.setdefault("COINSTREAM_PAYOUTS_RECONCILE_INTERVAL_SECONDS", str(RECONCILE_INTERVAL_SECONDS))
        return env


@dataclass
class Child:
    """A process whose unexpected exit brings the whole stack down."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    # Service output is already on the terminal; the servers' goes only to their log files.
    output_on_terminal: bool = False


class DevStack:
    def __init__(self, plan: StackPlan) -> None:
        self.plan = plan
        self._cleanup = ExitStack()  # unwinds in reverse start order: services, then NATS, then PostgreSQL
        self._children: list[Child] = []
        self._pumps: list[threading.Thread] = []

    # -- startup ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._check_ports_free()
        if self.plan.embedded_databases:
            self._start_postgres()
        if self.plan.embedded_nats:
            self._start_nats()
        _make_stripe_webhook_secret()
        self._start_services()
        self._wait_until_serving()

    def _check_ports_free(self) -> None:
        """A leftover server from a killed run would otherwise make a confusing failure much later."""
        wanted = {f"{spec.name} gRPC": spec.port(self.plan.environ) for spec in SERVICES}
        wanted |= {f"{s.name} HTTP": s.http_port(self.plan.environ) for s in SERVICES if s.default_http_port}
        if self.plan.embedded_databases:
            wanted["PostgreSQL"] = POSTGRES_PORT
        if self.plan.embedded_nats:
            wanted["NATS"] = NATS_PORT
        busy = [f"{what} port {port}" for what, port in wanted.items() if _port_in_use(port)]
        if busy:
            raise StackError(
                f"already in use: {', '.join(busy)}. Is another `make run` still running? A leftover PostgreSQL "
                f"writes its pid to {DATA_DIR / 'postgres' / 'postmaster.pid'}."
            )

    def _start_postgres(self) -> None:
        server = PostgresServer(data_dir=DATA_DIR / "postgres", port=POSTGRES_PORT, durable=True)
        self._cleanup.callback(self._stop_server, "PostgreSQL", server.stop)
        say(f"starting PostgreSQL on 127.0.0.1:{POSTGRES_PORT} (data in {_relative(server.data_dir)})")
        server.start()
        assert server.process is not None
        self._children.append(Child("postgres", server.process, server.log_path))
        for database in self.plan.embedded_databases:
            _create_database(server, database)

    def _start_nats(self) -> None:
        server = NatsServer(data_dir=DATA_DIR / "nats", port=NATS_PORT)
        self._cleanup.callback(self._stop_server, "NATS", server.stop)
        say(f"starting NATS JetStream on {server.url} (data in {_relative(server.data_dir)})")
        server.start()
        assert server.process is not None
        self._children.append(Child("nats", server.process, server.log_path))
        self.plan.nats_credentials = server.credentials

    def _start_services(self) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        started: list[Child] = []
        self._cleanup.callback(self._stop_services, started)
        for spec in SERVICES:
            say(f"starting {spec.name} on {spec.address(self.plan.environ)}")
            child = self._spawn_service(spec)
            started.append(child)
            self._children.append(child)

    def _spawn_service(self, spec: ServiceSpec) -> Child:
        # A new session keeps the terminal's Ctrl-C away from the children, so that this process alone decides
        # the shutdown order (services before the servers they depend on).
        process = subprocess.Popen(
            [sys.executable, "-m", spec.module],
            cwd=REPO_ROOT,
            env=self.plan.service_environment(spec),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        pump = threading.Thread(target=_pump_output, args=(spec, process), name=f"pump-{spec.name}", daemon=True)
        pump.start()
        self._pumps.append(pump)
        return Child(spec.name, process, spec.log_path, output_on_terminal=True)

    def _wait_until_serving(self) -> None:
        # Every child exists before the first gRPC channel does: gRPC must not be initialised when we fork.
        deadline = time.monotonic() + SERVICE_READY_TIMEOUT_SECONDS
        started_at = time.monotonic()
        for spec in SERVICES:
            address = spec.address(self.plan.environ)
            try:
                wait_until_serving(
                    address,
                    timeout_seconds=max(0.0, deadline - time.monotonic()),
                    still_starting=self._raise_if_a_child_died,
                    poll_seconds=0.25,
                )
            except NotServingError as late:
                raise StackError(
                    f"{spec.name} did not report SERVING on {address} in time (last: {late.last_status})"
                ) from None
            say(f"{spec.name} is SERVING ({time.monotonic() - started_at:.1f} s)")

    # -- steady state ----------------------------------------------------------------------------------------

    def supervise(self) -> None:
        """Returns never; raises StackError when a child dies, ShutdownRequested on a signal."""
        while True:
            self._raise_if_a_child_died()
            time.sleep(SUPERVISE_INTERVAL_SECONDS)

    def _raise_if_a_child_died(self) -> None:
        for child in self._children:
            code = child.process.poll()
            if code is not None:
                raise StackError(
                    f"{child.name} exited unexpectedly with code {code}; its log is {_relative(child.log_path)}",
                    "" if child.output_on_terminal else _tail(child.log_path),
                )

    # -- shutdown --------------------------------------------------------------------------------------------

    def stop(self) -> None:
        self._cleanup.close()

    def _stop_services(self, children: list[Child]) -> None:
        """SIGTERM to all at once (each drains its RPCs in parallel), then wait; kill what outlives the timeout."""
        running = [child for child in reversed(children) if child.process.poll() is None]
        if running:
            say(f"stopping {', '.join(child.name for child in running)}")
        for child in running:
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + SERVICE_STOP_TIMEOUT_SECONDS
        for child in running:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{child.name} did not stop within {SERVICE_STOP_TIMEOUT_SECONDS:.0f} s; killing it", "red")
                child.process.kill()
                child.process.wait()
        for pump in self._pumps:
            pump.join(timeout=2.0)  # let the services' last log lines out before the next message

    @staticmethod
    def _stop_server(what: str, stop: Callable[[], None]) -> None:
        say(f"stopping {what}")
        stop()

    # -- banner ----------------------------------------------------------------------------------------------

    def print_banner(self) -> None:
        with _output_lock:
            console.print(banner(self.plan))


def _make_stripe_webhook_secret() -> None:
    """Once: a random development secret, readable by this user only (a webhook forged with it would be believed)."""
    if STRIPE_WEBHOOK_SECRET_FILE.exists():
        return
    STRIPE_WEBHOOK_SECRET_FILE.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(STRIPE_WEBHOOK_SECRET_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as secret:
        secret.write(f"whsec_{secrets.token_hex(24)}\n")


def banner(plan: StackPlan) -> Group:
    """Plain lines rather than a box, so that the commands copy-paste cleanly at any terminal width."""
    nats_origin = "embedded, JetStream file storage, sync_interval: always" if plan.embedded_nats else "external"
    postgres_origin = (
        f"embedded on 127.0.0.1:{POSTGRES_PORT}, data in .data/postgres" if plan.embedded_databases else "external"
    )
    secret_origin = "COINSTREAM_AUTH_SECRET" if plan.environ.get("COINSTREAM_AUTH_SECRET") else "the dev default secret"
    token = "$(.venv/bin/coinstream token --sub alice --role user)"
    lines: list[Text] = [Text()]
    for spec in SERVICES:
        endpoint = f"{spec.address(plan.environ):<17} db {_redact(plan.database_urls[spec.name])}"
        lines.append(Text.assemble(("  " + f"{spec.name:<10}", f"bold {spec.style}"), endpoint))
        lines += _http_lines(spec, plan)
    lines += [
        _labelled("NATS", f"{plan.nats_url}  ({nats_origin})"),
        *_nats_login_lines(plan),
        _labelled("Postgres", postgres_origin),
        _labelled("Logs", ".data/logs/<service>.log (and here, prefixed by service)"),
        _labelled("Mode", "development: plaintext gRPC on loopback, sandbox payments and payouts (README: Security)"),
        _labelled("Auth", f"HS256 JWTs signed with {secret_origin}"),
        _labelled("Webhooks", f"Stripe's signing secret (Stripe providers): {_relative(STRIPE_WEBHOOK_SECRET_FILE)}"),
        Text(),
        Text("  Mint a dev token:", style="bold"),
        Text("    .venv/bin/coinstream token --sub alice --role user"),
        Text("  Call an RPC (grpcurl; reflection is on):", style="bold"),
        Text(f'    grpcurl -plaintext -H "authorization: Bearer {token}" \\'),
        Text('      -d \'{"account_id":"alice"}\' 127.0.0.1:50051 coinstream.wallet.v1.WalletService/GetBalance'),
        Text("  Run a scripted live stream, check health:", style="bold"),
        Text("    .venv/bin/coinstream demo"),
        Text("    .venv/bin/coinstream health"),
        *_operator_commands(plan),
        Text(),
        Text(
            "  Ctrl-C stops everything. Data persists in .data/ between runs (delete it to start afresh).", style="dim"
        ),
    ]
    return Group(Rule("coinstream dev stack is up", style="green"), *lines, Rule(style="green"))


def _http_lines(spec: ServiceSpec, plan: StackPlan) -> list[Text]:
    """A service's HTTP port for providers: where a store's notifications or a webhook are sent (GET /healthz)."""
    paths = HTTP_PATHS.get(spec.name)
    if not paths:
        return []
    return [Text(f"            http://127.0.0.1:{spec.http_port(plan.environ)}  {' '.join(paths)}")]


def _nats_login_lines(plan: StackPlan) -> list[Text]:
    """Where the operator's NATS password is: `coinstream dead-letters` and `reconcile` need it (anonymous clients
    are refused). Never the password itself: the terminal may be shared or recorded."""
    if plan.nats_credentials is None:
        return []
    operator_file = _relative(plan.nats_credentials.password_file(OPERATOR_USER))
    return [
        _labelled("NATS auth", f"a user per service; passwords in {_relative(plan.nats_credentials.directory)}/"),
        Text(f"            operator: export {USER_SETTING}={OPERATOR_USER} {PASSWORD_FILE_SETTING}={operator_file}"),
    ]


def _operator_commands(plan: StackPlan) -> list[Text]:
    if plan.nats_credentials is None:
        return []
    return [
        Text("  Dead letters and reconciliation (after the operator's export above):", style="bold"),
        Text("    .venv/bin/coinstream dead-letters list"),
        Text("    .venv/bin/coinstream reconcile"),
    ]


def _labelled(label: str, value: str) -> Text:
    return Text.assemble((f"  {label:<10}", "bold"), value)


# -- helpers -------------------------------------------------------------------------------------------------


def say(message: str, style: str = "bold blue") -> None:
    with _output_lock:
        console.print(Text.assemble(("devstack │ ", style), message))


def _pump_output(spec: ServiceSpec, process: subprocess.Popen[bytes]) -> None:
    """Copies a service's output to its log file and, prefixed with its name, to the terminal."""
    assert process.stdout is not None
    prefix = (f"{spec.name:>8} │ ", spec.style)
    with spec.log_path.open("a", encoding="utf-8") as log_file:
        log_file.write(f"---- started pid {process.pid} at {time.strftime('%Y-%m-%d %H:%M:%S')} ----\n")
        for raw_line in iter(process.stdout.readline, b""):
            line = raw_line.decode("utf-8", errors="replace").rstrip("\n")
            log_file.write(line + "\n")
            log_file.flush()
            with _output_lock:
                console.print(Text.assemble(prefix, line))


def _create_database(server: PostgresServer, database: str) -> None:
    try:
        server.create_database(database)
    except subprocess.CalledProcessError as error:
        stderr = (error.stderr or b"").decode(errors="replace")
        raise StackError(f"could not create database {database}", stderr) from None


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _redact(url: str) -> str:
    """External database URLs may carry a password; the banner must not print it."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


# -- signals and main ----------------------------------------------------------------------------------------

_stopping = False


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if _stopping:
        # Straight to the file descriptor, not through say(): the handler runs in the main thread, which may be
        # inside say() holding _output_lock (a second Ctrl-C while the first one's "shutting down" prints), and
        # waiting for that lock here hung `make run` for good with every server still running.
        notice = f"devstack │ already stopping; services get up to {SERVICE_STOP_TIMEOUT_SECONDS:.0f} s to drain\n"
        with contextlib.suppress(OSError):
            os.write(sys.stderr.fileno(), notice.encode())
        return
    raise ShutdownRequested(signal.Signals(signum).name)


def main() -> int:
    global _stopping
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    stack = DevStack(StackPlan.from_environment(dict(os.environ)))
    exit_code = 0
    try:
        stack.start()
        stack.print_banner()
        stack.supervise()
    except ShutdownRequested as request:
        _stopping = True
        say(f"received {request}; shutting down")
    except (StackError, RuntimeError, OSError) as error:
        _stopping = True
        exit_code = 1
        _report_failure(error)
    finally:
        _stopping = True
        stack.stop()
    say("stopped" if exit_code == 0 else "stopped after a failure", "bold blue" if exit_code == 0 else "bold red")
    return exit_code


def _report_failure(error: Exception) -> None:
    summary, *details = error.args or (repr(error),)
    say(f"error: {summary}", "bold red")
    for detail in details:
        if detail:
            with _output_lock:
                console.print(Text(str(detail), style="dim"))


if __name__ == "__main__":
    sys.exit(main())
