"""Settings read from COINSTREAM_* environment variables (pydantic-settings). Each service extends RuntimeSettings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.runtime.batching import BatchPolicy
from services.runtime.database import tls_mode
from services.runtime.nats_login import NatsLogin, read_nats_login
from services.runtime.rate_limits import DEFAULT_RATE_LIMITS, RateLimit
from services.runtime.tls import nats_urls_are_tls

DEV_AUTH_SECRET = "dev-only-secret-change-me-in-production"
# HS256 with a shorter secret can be brute-forced offline from one token (RFC 7518 asks for at least 256 bits).
MIN_AUTH_SECRET_BYTES = 32


# Set while `python -m services.<name> migrate` reads its settings (migration_only()): production then checks what a
# migration uses, its database connection, and not the serving settings (TLS certificates, NATS, tokens) that a
# migration job is, on purpose, not given.
_migrating: ContextVar[bool] = ContextVar("coinstream_migrating", default=False)


def migrating() -> bool:
    return _migrating.get()


@contextmanager
def migration_only() -> Iterator[None]:
    token = _migrating.set(True)
    try:
        yield
    finally:
        _migrating.reset(token)


class RuntimeSettings(BaseSettings):
    # Errors never echo their input: it holds the secrets (auth secret, tokens, passwords) among the rest.
    model_config = SettingsConfigDict(env_prefix="COINSTREAM_", extra="ignore", hide_input_in_errors=True)

    # development (the default: `make run`, the tests) or production: a production process refuses to start while
    # anything in production_problems() holds, each naming the setting to fix. The image and manifests set it.
    environment: Literal["development", "production"] = "development"
    # Staging: production mode with the sandbox payment and payout providers, on purpose and visibly.
    allow_sandbox_providers: bool = False
    # Production mode with the service's own database reached in clear (no sslmode, or disable), for a database whose
    # traffic never leaves the machine: compose on one host (a PostgreSQL image built without SSL), or a local proxy
    # that encrypts onwards (Cloud SQL Auth Proxy, a pgbouncer sidecar). An encrypted but unverified connection
    # (require, prefer) and other databases (payouts' reconciliation) stay refused.
    allow_plaintext_database: bool = False

    # Auth: HS256 with a shared secret in development; RS256 or ES256 with public keys in production — one PEM key
    # inline, or a file holding a PEM key or a JWKS (several keys, picked by the token's kid, so keys rotate without
    # downtime; the file is read again when it changes).
    auth_algorithm: Literal["HS256", "RS256", "ES256"] = "HS256"
    auth_secret: SecretStr = SecretStr(DEV_AUTH_SECRET)
    auth_public_key_pem: str = ""
    auth_public_keys_file: str = ""
    # Checked when set: the token's iss, and this service's name among its aud. A token with an aud is accepted when
    # no audience is configured.
    auth_issuer: str = ""
    auth_audience: str = ""
    # Tokens may not live longer than this (exp − now, at verification); clocks may differ by the leeway.
    auth_max_token_lifetime_seconds: int = Field(default=24 * 3600, gt=0)
    auth_leeway_seconds: float = Field(default=30.0, ge=0)

    # One URL, or the nodes of a cluster separated by commas.
    nats_url: str = "nats://127.0.0.1:4222"
    # Copies of each JetStream stream (GIFTS, DEAD_LETTERS): 1 for a single server, 3 on a 3-node cluster. A start
    # never lowers the count of an existing stream.
    nats_stream_replicas: int = Field(default=1, ge=1, le=5)
    grpc_host: str = "127.0.0.1"
    # Where the HTTP port for providers (the service's http_port, when it has one) listens, and the largest body it
    # reads: a notification is a few KiB; anything far larger is refused 413 unread.
    http_host: str = "127.0.0.1"
    http_max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=16 * 1024 * 1024)
    # Where /metrics listens (when a metrics port is set): loopback unless configured, since the metrics name
    # methods, workers and counts an outsider has no business reading. Containers set it for their scraper.
    metrics_host: str = "127.0.0.1"
    # How often the gauges read from the database and JetStream (outbox backlog, consumer pending, dead letters,
    # withdrawals) are refreshed; they are read only when the metrics port is set.
    metrics_poll_interval_seconds: float = Field(default=15.0, gt=0)
    # OpenTelemetry traces go to this OTLP/gRPC collector (http://host:4317, or https:// for TLS); unset: no
    # tracing at all (services/runtime/tracing.py). The standard OTEL_* variables tune the rest.
    otlp_endpoint: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=3600)
    # Unary RPCs handled at once per process; beyond it calls are shed with RESOURCE_EXHAUSTED / RATE_LIMITED.
    # (At least 1: 0 would shed every call.)
    max_in_flight_unary_rpcs: int = Field(default=1000, ge=1)
    # Per-caller token buckets by RPC name, merged over DEFAULT_RATE_LIMITS (services/runtime/rate_limits.py), as
    # JSON: COINSTREAM_RATE_LIMITS='{"SendGift": {"per_second": 5, "burst": 20}}'. Service-role callers are exempt.
    rate_limits: dict[str, RateLimit] = Field(default_factory=dict)
    # Streams one HTTP/2 connection may have open at once (calls in flight and live feeds): a client cannot open
    # an unbounded number on one connection.
    grpc_max_concurrent_streams: int = Field(default=1000, ge=1)
    # A client connection is closed (gracefully: calls in flight finish) after this long, so that long-lived
    # clients reconnect, resolve the name again and spread over pods started since. 0: never — the default, since
    # it would also cut live feeds; the wallet (which gifts calls over one long-lived channel) sets it.
    grpc_max_connection_age_seconds: float = Field(default=0.0, ge=0)
    # Health Watch and reflection streams (no token needed, so anyone who reaches the port may open them) held at
    # once per process; beyond it they are refused with RESOURCE_EXHAUSTED.
    max_public_streams: int = Field(default=100, ge=1)
    # Hot paths (SendGift, SpendCoins) work in batches: up to batch_max_size items per batch, up to
    # batch_max_in_flight batches at once — a second one only while batch_concurrent_min_queue items or more wait;
    # a call that would wait in the queue longer than admission_queue_budget_seconds (or one full batch's time) is
    # refused at once with RESOURCE_EXHAUSTED / RATE_LIMITED.
    batch_max_size: int = Field(default=200, ge=1, le=1000)
    # Two: in full make bench runs a second batch beside the first under a deep queue carried 907 and 919 gifts/s
    # closed-loop (636 in a slower run) against 547 with one: a batch spends most of its time waiting on round trips.
    batch_max_in_flight: int = Field(default=2, ge=1, le=16)
    batch_concurrent_min_queue: int = Field(default=50, ge=1, le=100_000)
    admission_queue_budget_seconds: float = Field(default=0.05, gt=0)

    # NATS login: each service its own user, whose rights services/runtime/nats_permissions.py lists (deny by
    # default). No user: anonymous, for a development server without authorization. The password file, when set, wins
    # over the password and is read at connect: a Kubernetes Secret mounted as a file. See nats_login().
    nats_user: str = ""
    nats_password: SecretStr = SecretStr("")
    nats_password_file: str = ""

    # Connections the pool keeps open / may open (the database's max_connections is shared by every replica).
    db_pool_min_size: int = Field(default=2, ge=0, le=1000)
    db_pool_max_size: int = Field(default=10, ge=1, le=1000)
    db_command_timeout_seconds: float = Field(default=10.0, gt=0)
    db_connect_timeout_seconds: float = Field(default=60.0, gt=0)
    # The server ends a session idle inside a transaction this long (0: never), so a stuck client frees its locks.
    db_idle_in_transaction_timeout_seconds: float = Field(default=60.0, ge=0)
    # Migrations have timeouts of their own: a replica waits this long for another's migration lock, and a
    # migration statement may run this long (the pool's command timeout would cut both at 10 s).
    db_migration_lock_wait_seconds: float = Field(default=600.0, gt=0)
    db_migration_statement_timeout_seconds: float = Field(default=3600.0, gt=0)
    # How long a migration statement may wait for a table lock (0: as long as the statement timeout). A migration
    # job sets a few seconds: an ALTER TABLE queued behind a long transaction would hold up every query behind it;
    # failing fast (the transaction rolls back, the job retries) keeps the service answering.
    db_migration_lock_timeout_seconds: float = Field(default=0.0, ge=0)
    # true (development, `make run`, the tests, a single process): a start applies the pending migrations. false
    # (production, where a migration job owns the schema and the service's role cannot change it): a start waits,
    # up to db_migration_lock_wait_seconds, until every migration this code knows is recorded, then serves.
    db_migrate_on_start: bool = True
    # `migrate` only: the role the service runs as, granted rows and nothing else (SELECT, INSERT, UPDATE, DELETE on
    # every table, sequences' USAGE; reading schema_migrations but not writing it) on what the migrations made,
    # and by default on what later ones make. Empty: no grants (a single role owns everything, as in development).
    db_runtime_role: str = Field(default="", pattern=r"^([a-z_][a-z0-9_]{0,62})?$")

    # ---- TLS: PEM files, all unset by default (development is plaintext); services/runtime/tls.py builds the
    # credentials from them. gRPC server: cert + key → the port serves TLS only; a client CA as well → mutual TLS, a
    # client must present a certificate that CA signed or the handshake fails.
    grpc_tls_cert_file: str = ""
    grpc_tls_key_file: str = ""
    grpc_tls_client_ca_file: str = ""
    # A second, plaintext port serving grpc.health.v1.Health and nothing else (0: none). Kubernetes' native gRPC
    # probes cannot speak TLS; health statuses reveal nothing worth encrypting, and no other RPC is reachable there.
    grpc_health_port: int = Field(default=0, ge=0, le=65535)
    # NATS: a CA → TLS, the server's certificate verified against it (tls:// URLs work too); a client certificate and
    # key as well → mutual TLS, for a server that verifies its clients.
    nats_tls_ca_file: str = ""
    nats_tls_cert_file: str = ""
    nats_tls_key_file: str = ""
    # The HTTP port for providers' notifications and webhooks (services/runtime/http_ingress.py; wallet and payouts):
    # cert + key → it serves HTTPS only. Production refuses it in clear unless TLS ends in front of it, on purpose
    # (COINSTREAM_ALLOW_PLAINTEXT_HTTP: an ingress controller or load balancer holding the public certificate that
    # the stores and Stripe require).
    http_tls_cert_file: str = ""
    http_tls_key_file: str = ""
    allow_plaintext_http: bool = False
    # PostgreSQL has no setting here: the database URL carries its TLS (?sslmode=verify-full&sslrootcert=…, and
    # &sslcert=…&sslkey=… for a client certificate), which asyncpg honours; database.tls_mode reads the mode back.

    @model_validator(mode="after")
    def _pool_sizes_fit(self) -> RuntimeSettings:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError("COINSTREAM_DB_POOL_MIN_SIZE is larger than COINSTREAM_DB_POOL_MAX_SIZE")
        return self

    @model_validator(mode="after")
    def _tls_files_come_in_pairs(self) -> RuntimeSettings:
        problems = self.tls_setting_problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def tls_setting_problems(self) -> list[str]:
        """TLS settings that cannot work, each naming the setting to fix (no file is read here: see tls.py)."""
        return self.missing_partners(
            [
                ("grpc_tls_cert_file", "grpc_tls_key_file", "a certificate needs its private key"),
                ("grpc_tls_key_file", "grpc_tls_cert_file", "a private key needs its certificate"),
                ("grpc_tls_client_ca_file", "grpc_tls_cert_file", "mutual TLS needs the server's own certificate"),
                ("nats_tls_cert_file", "nats_tls_key_file", "a certificate needs its private key"),
                ("nats_tls_key_file", "nats_tls_cert_file", "a private key needs its certificate"),
                ("http_tls_cert_file", "http_tls_key_file", "a certificate needs its private key"),
                ("http_tls_key_file", "http_tls_cert_file", "a private key needs its certificate"),
            ]
        )

    def missing_partners(self, pairs: list[tuple[str, str, str]]) -> list[str]:
        """For each (field, partner, why): an error when the field is set and its partner is not."""
        return [
            f"{self.env_name(field)} is set but {self.env_name(partner)} is not: {why}"
            for field, partner, why in pairs
            if getattr(self, field) and not getattr(self, partner)
        ]

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of a settings field, as an error should name it."""
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    @property
    def grpc_tls_enabled(self) -> bool:
        return bool(self.grpc_tls_cert_file and self.grpc_tls_key_file)

    @property
    def grpc_mutual_tls_enabled(self) -> bool:
        return self.grpc_tls_enabled and bool(self.grpc_tls_client_ca_file)

    @property
    def http_tls_enabled(self) -> bool:
        return bool(self.http_tls_cert_file and self.http_tls_key_file)

    @property
    def nats_tls_enabled(self) -> bool:
        """A CA configured, or every server given as tls:// (verified against the system's CAs then)."""
        return bool(self.nats_tls_ca_file) or nats_urls_are_tls(self.nats_url)

    # ---- end of TLS

    # The contract promises at least 7 days of replays.
    idempotency_retention_days: int = Field(default=8, ge=7, le=3650)
    # Providers' notification ids (wallet, payouts) are kept this long to take each notification once: providers
    # retry for a few days (services/runtime/notification_inbox.py).
    notification_retention_days: int = Field(default=90, ge=30, le=3650)
    # Test-only: comma-separated crash points at which the process kills itself (see services/runtime/faults.py).
    fault_points: str = ""

    def production_problems(self) -> list[str]:
        """What a production deployment must not run with, one line per setting to fix. Services add their own."""
        problems = []
        if self.auth_algorithm == "HS256":
            secret = self.auth_secret.get_secret_value()
            if secret == DEV_AUTH_SECRET:
                problems.append("COINSTREAM_AUTH_SECRET is the development secret: anyone can mint tokens with it")
            elif len(secret.encode()) < MIN_AUTH_SECRET_BYTES:
                problems.append(f"COINSTREAM_AUTH_SECRET is shorter than {MIN_AUTH_SECRET_BYTES} bytes")
        if not self.grpc_tls_enabled:
            problems.append(
                "COINSTREAM_GRPC_TLS_CERT_FILE and COINSTREAM_GRPC_TLS_KEY_FILE are unset: bearer tokens would cross"
                " the network in clear text"
            )
        if self.http_port and not self.http_tls_enabled and not self.allow_plaintext_http:
            problems.append(
                "COINSTREAM_HTTP_TLS_CERT_FILE and COINSTREAM_HTTP_TLS_KEY_FILE are unset: providers' notifications"
                " would arrive in clear text (set COINSTREAM_ALLOW_PLAINTEXT_HTTP=true when TLS ends at an ingress"
                " in front of the port)"
            )
        problems += self.own_database_tls_problems()
        return problems

    def own_database_tls_problems(self) -> list[str]:
        if self.allow_plaintext_database and tls_mode(self.database_url) in ("", "disable"):
            return []
        return self.database_tls_problems({self.env_name(f"{self.service_name}_database_url"): self.database_url})

    def nats_problems(self) -> list[str]:
        """For the services that use NATS: an encrypted connection, and a login of their own."""
        problems = []
        if not self.nats_tls_enabled:
            problems.append("COINSTREAM_NATS_TLS_CA_FILE is unset (and COINSTREAM_NATS_URL is not tls://)")
        if not self.nats_user:
            problems.append("COINSTREAM_NATS_USER is unset: NATS must not take anonymous clients in production")
        return problems

    @staticmethod
    def database_tls_problems(urls: dict[str, str]) -> list[str]:
        return [
            f"{setting} must have sslmode=verify-full (it has {tls_mode(url) or 'none'}): anything less trusts any"
            " server that answers"
            for setting, url in urls.items()
            if tls_mode(url) != "verify-full"
        ]

    def sandbox_provider_problem(self, setting: str, provider: str) -> list[str]:
        if provider != "sandbox" or self.allow_sandbox_providers:
            return []
        return [
            f"{setting} is the sandbox: it accepts made-up payment details"
            " (set COINSTREAM_ALLOW_SANDBOX_PROVIDERS=true only on a staging deployment)"
        ]

    def migration_production_problems(self) -> list[str]:
        """What `migrate` must not run with in production: it only talks to its database (no port, NATS or token)."""
        return self.own_database_tls_problems()

    @model_validator(mode="after")
    def _refuse_an_unsafe_production(self) -> Self:
        if self.environment == "production":
            problems = self.migration_production_problems() if migrating() else self.production_problems()
            if problems:
                raise ValueError("COINSTREAM_ENVIRONMENT=production refuses to start:\n- " + "\n- ".join(problems))
        return self

    def effective_rate_limits(self) -> dict[str, RateLimit]:
        return {**DEFAULT_RATE_LIMITS, **self.rate_limits}

    def nats_login(self) -> NatsLogin:
        """Raises NatsLoginError, naming the setting, for a password file that cannot be read."""
        return read_nats_login(self.nats_user, self.nats_password, self.nats_password_file)

    def batch_policy(self) -> BatchPolicy:
        return BatchPolicy(
            self.batch_max_size,
            self.batch_max_in_flight,
            self.admission_queue_budget_seconds,
            self.batch_concurrent_min_queue,
        )

    @property
    def service_name(self) -> str:
        raise NotImplementedError

    @property
    def database_url(self) -> str:
        raise NotImplementedError

    @property
    def grpc_port(self) -> int:
        raise NotImplementedError

    @property
    def metrics_port(self) -> int:
        """0 disables the Prometheus endpoint."""
        raise NotImplementedError

    @property
    def http_port(self) -> int:
        """The HTTP port for providers' notifications; 0: the service has none (gifts)."""
        return 0
