"""Settings read from COINSTREAM_* environment variables (pydantic-settings). Each service extends RuntimeSettings."""

from __future__ import annotations

from typing import Literal

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_AUTH_SECRET = "dev-only-secret-change-me-in-production"


class RuntimeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="COINSTREAM_", extra="ignore")

    # Auth: HS256 with a shared secret in development; RS256 with a PEM public key in production.
    auth_algorithm: Literal["HS256", "RS256"] = "HS256"
    auth_secret: SecretStr = SecretStr(DEV_AUTH_SECRET)
    auth_public_key_pem: str = ""

    nats_url: str = "nats://127.0.0.1:4222"
    grpc_host: str = "127.0.0.1"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"
    shutdown_grace_seconds: float = 10.0
    # Unary RPCs handled at once per process; beyond it calls are shed with RESOURCE_EXHAUSTED / RATE_LIMITED.
    max_in_flight_unary_rpcs: int = 1000

    db_pool_min_size: int = 2
    db_pool_max_size: int = 10
    db_command_timeout_seconds: float = 10.0
    db_connect_timeout_seconds: float = 60.0
    db_idle_in_transaction_timeout_seconds: float = 60.0

    idempotency_retention_days: int = 8
    # Test-only: comma-separated crash points at which the process kills itself (see services/runtime/faults.py).
    fault_points: str = ""

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
