"""Settings read from COINSTREAM_* environment variables (pydantic-settings). Each service extends RuntimeSettings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.runtime.batching import BatchPolicy
from services.runtime.nats_login import NatsLogin, read_nats_login

DEV_AUTH_SECRET = "dev-only-secret-change-me-in-production"


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COINSTREAM_", extra="ignore")

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
    # Where /metrics listens (when a metrics port is set): loopback unless configured, since the metrics name
    # methods, workers and counts an outsider has no business reading. Containers set it for their scraper.
    metrics_host: str = "127.0.0.1"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    shutdown_grace_seconds: float = 10.0
    # Unary RPCs handled at once per process; beyond it calls are shed with RESOURCE_EXHAUSTED / RATE_LIMITED.
    max_in_flight_unary_rpcs: int = Field(default=1000, ge=0)
    # Hot paths (SendGift, SpendCoins) work in batches: up to batch_max_size items per batch, up to
    # batch_max_in_flight batches at once; a call that would wait in the queue longer than
    # admission_queue_budget_seconds is refused at once with RESOURCE_EXHAUSTED / RATE_LIMITED.
    batch_max_size: int = Field(default=200, ge=1, le=1000)
    batch_max_in_flight: int = Field(default=1, ge=1, le=16)
    admission_queue_budget_seconds: float = Field(default=0.05, gt=0)

    # NATS login: each service its own user, whose rights services/runtime/nats_permissions.py lists (deny by
    # default). No user: anonymous, for a development server without authorization. The password file, when set, wins
    # over the password and is read at connect: a Kubernetes Secret mounted as a file. See nats_login().
    nats_user: str = ""
    nats_password: SecretStr = SecretStr("")
    nats_password_file: str = ""

    db_pool_min_size: int = 2
    db_pool_max_size: int = 10
    db_command_timeout_seconds: float = 10.0
    db_connect_timeout_seconds: float = 60.0
    db_idle_in_transaction_timeout_seconds: float = 60.0
    # Migrations have timeouts of their own: a replica waits this long for another's migration lock, and a
    # migration statement may run this long (the pool's command timeout would cut both at 10 s).
    db_migration_lock_wait_seconds: float = Field(default=600.0, gt=0)
    db_migration_statement_timeout_seconds: float = Field(default=3600.0, gt=0)

    idempotency_retention_days: int = 8
    # Test-only: comma-separated crash points at which the process kills itself (see services/runtime/faults.py).
    fault_points: str = ""

    def nats_login(self) -> NatsLogin:
        """Raises NatsLoginError, naming the setting, for a password file that cannot be read."""
        return read_nats_login(self.nats_user, self.nats_password, self.nats_password_file)

    def batch_policy(self) -> BatchPolicy:
        return BatchPolicy(self.batch_max_size, self.batch_max_in_flight, self.admission_queue_budget_seconds)

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
