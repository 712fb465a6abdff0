"""COINSTREAM_ENVIRONMENT=production refuses to start with what a production deployment must not have — the dev or a
short secret, sandbox providers, plaintext gRPC, NATS or PostgreSQL, an anonymous NATS login, a self-minting gifts, a
diamond hold under a day — naming each setting to fix; development (make run, the tests) starts with the defaults."""

from __future__ import annotations

import subprocess
import sys

import pydantic
import pytest
from structlog.testing import capture_logs

from services.gifts.config import GiftsSettings
from services.payouts.__main__ import warn_of_an_allowed_short_hold
from services.payouts.config import PayoutsSettings
from services.runtime.config import RuntimeSettings, migration_only
from services.wallet.config import WalletSettings
from tests.support.stack import REPO_ROOT

SECRET = "a-production-secret-that-is-long-enough-0123456789"
VERIFIED_DSN = "postgresql://svc@db.internal/{0}?sslmode=verify-full&sslrootcert=/etc/coinstream/db-ca.pem"
SAFE_PRODUCTION = {
    "COINSTREAM_ENVIRONMENT": "production",
    "COINSTREAM_AUTH_SECRET": SECRET,
    "COINSTREAM_GRPC_TLS_CERT_FILE": "/etc/coinstream/tls.crt",
    "COINSTREAM_GRPC_TLS_KEY_FILE": "/etc/coinstream/tls.key",
    "COINSTREAM_HTTP_TLS_CERT_FILE": "/etc/coinstream/tls.crt",
    "COINSTREAM_HTTP_TLS_KEY_FILE": "/etc/coinstream/tls.key",
    "COINSTREAM_NATS_TLS_CA_FILE": "/etc/coinstream/nats-ca.pem",
    "COINSTREAM_NATS_USER": "svc",
    "COINSTREAM_NATS_PASSWORD": "nats-password",
    "COINSTREAM_WALLET_DATABASE_URL": VERIFIED_DSN.format("coinstream_wallet"),
    "COINSTREAM_GIFTS_DATABASE_URL": VERIFIED_DSN.format("coinstream_gifts"),
    "COINSTREAM_PAYOUTS_DATABASE_URL": VERIFIED_DSN.format("coinstream_payouts"),
    "COINSTREAM_GIFTS_WALLET_TOKEN_FILE": "/var/run/secrets/coinstream/wallet-token",
    "COINSTREAM_GIFTS_WALLET_TLS_CA_FILE": "/etc/coinstream/ca.pem",
    "COINSTREAM_DIAMOND_HOLD_SECONDS": "604800",  # the production overlay's 7 days
}
SETTINGS = (WalletSettings, GiftsSettings, PayoutsSettings)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    allowances = ("SANDBOX_PROVIDERS", "PLAINTEXT_DATABASE", "SHORT_DIAMOND_HOLD", "PLAINTEXT_HTTP")
    for name in [*SAFE_PRODUCTION, *(f"COINSTREAM_ALLOW_{allowed}" for allowed in allowances)]:
        monkeypatch.delenv(name, raising=False)


def refusal(settings: type[RuntimeSettings]) -> str:
    with pytest.raises(pydantic.ValidationError) as refused:
        settings()
    return str(refused.value)


@pytest.mark.parametrize("settings", SETTINGS)
def test_development_starts_with_the_defaults(settings: type[RuntimeSettings]) -> None:
    assert settings().environment == "development"


@pytest.mark.parametrize("settings", SETTINGS)
def test_production_with_the_defaults_names_every_setting_to_fix(
    settings: type[RuntimeSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COINSTREAM_ENVIRONMENT", "production")
    message = refusal(settings)
    for fragment in ("COINSTREAM_AUTH_SECRET is the development secret", "COINSTREAM_GRPC_TLS_CERT_FILE"):
        assert fragment in message
    assert f"COINSTREAM_{settings.__name__.removesuffix('Settings').upper()}_DATABASE_URL must have sslmode" in message
    assert "COINSTREAM_NATS_TLS_CA_FILE" in message and "COINSTREAM_NATS_USER" in message  # every service uses NATS
    if settings is GiftsSettings:
        assert "COINSTREAM_GIFTS_WALLET_TOKEN_FILE" in message and "COINSTREAM_GIFTS_WALLET_TLS_CA_FILE" in message
    if settings is PayoutsSettings:
        assert "COINSTREAM_DIAMOND_HOLD_SECONDS is 0, under 24 h" in message


@pytest.mark.parametrize("settings", SETTINGS)
def test_a_safe_production_configuration_starts(
    settings: type[RuntimeSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SAFE_PRODUCTION.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COINSTREAM_ALLOW_SANDBOX_PROVIDERS", "true")  # staging: nothing but the sandbox ships
    assert settings().environment == "production"


@pytest.mark.parametrize(
    ("settings", "setting"),
    [(WalletSettings, "COINSTREAM_PAYMENT_PROVIDER"), (PayoutsSettings, "COINSTREAM_PAYOUT_PROVIDER")],
)
def test_sandbox_providers_need_the_staging_opt_in(
    settings: type[RuntimeSettings], setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SAFE_PRODUCTION.items():
        monkeypatch.setenv(name, value)
    assert f"{setting} is the sandbox" in refusal(settings)


def safe_staging_payouts(monkeypatch: pytest.MonkeyPatch, hold_seconds: int) -> None:
    for name, value in SAFE_PRODUCTION.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COINSTREAM_ALLOW_SANDBOX_PROVIDERS", "true")
    monkeypatch.setenv("COINSTREAM_DIAMOND_HOLD_SECONDS", str(hold_seconds))


@pytest.mark.parametrize("hold_seconds", [0, 3600, 86_399])
def test_a_diamond_hold_under_a_day_is_refused_naming_both_settings_and_why(
    hold_seconds: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chargebacks arrive weeks after a purchase: without a hold, diamonds from fraudulent coins are withdrawn first."""
    safe_staging_payouts(monkeypatch, hold_seconds)
    message = refusal(PayoutsSettings)
    assert f"COINSTREAM_DIAMOND_HOLD_SECONDS is {hold_seconds}, under 24 h" in message
    assert "COINSTREAM_ALLOW_SHORT_DIAMOND_HOLD=true" in message and "chargebacks" in message


def test_a_diamond_hold_of_a_day_or_more_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    for hold_seconds in (86_400, 604_800):
        safe_staging_payouts(monkeypatch, hold_seconds)
        assert PayoutsSettings().diamond_hold_seconds == hold_seconds


@pytest.mark.parametrize("hold_seconds", [0, 60])
def test_a_short_diamond_hold_starts_with_its_own_opt_in_and_is_warned_of(
    hold_seconds: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    safe_staging_payouts(monkeypatch, hold_seconds)
    monkeypatch.setenv("COINSTREAM_ALLOW_SHORT_DIAMOND_HOLD", "true")
    settings = PayoutsSettings()
    assert settings.environment == "production" and settings.diamond_hold_seconds == hold_seconds
    with capture_logs() as logs:
        warn_of_an_allowed_short_hold(settings)
    assert [entry["event"] for entry in logs] == ["short_diamond_hold_allowed"]
    assert logs[0]["hold_seconds"] == hold_seconds and logs[0]["log_level"] == "warning"


def test_a_full_hold_or_development_is_not_warned_of(monkeypatch: pytest.MonkeyPatch) -> None:
    development = PayoutsSettings()
    assert development.diamond_hold_seconds == 0  # development keeps no hold, and says nothing of it
    with capture_logs() as logs:
        warn_of_an_allowed_short_hold(development)
        safe_staging_payouts(monkeypatch, 86_400)
        warn_of_an_allowed_short_hold(PayoutsSettings())
    assert logs == []


def test_a_short_secret_or_a_weaker_database_tls_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SAFE_PRODUCTION.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COINSTREAM_ALLOW_SANDBOX_PROVIDERS", "true")
    monkeypatch.setenv("COINSTREAM_AUTH_SECRET", "short-secret-value")
    monkeypatch.setenv("COINSTREAM_WALLET_DATABASE_URL", "postgresql://svc@db.internal/w?sslmode=require")
    message = refusal(WalletSettings)
    assert "COINSTREAM_AUTH_SECRET is shorter than 32 bytes" in message
    assert "COINSTREAM_WALLET_DATABASE_URL must have sslmode=verify-full (it has require)" in message
    assert "short-secret-value" not in message  # settings errors never echo their input


@pytest.mark.parametrize("settings", SETTINGS)
def test_a_plaintext_database_needs_its_own_opt_in_and_nothing_else_gives_way(
    settings: type[RuntimeSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """For a database whose traffic never leaves the machine (compose on one host, a local proxy)."""
    for name, value in SAFE_PRODUCTION.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COINSTREAM_ALLOW_SANDBOX_PROVIDERS", "true")
    variable = f"COINSTREAM_{settings.__name__.removesuffix('Settings').upper()}_DATABASE_URL"
    monkeypatch.setenv(variable, "postgresql://svc@postgres:5432/db")
    assert f"{variable} must have sslmode=verify-full" in refusal(settings)
    monkeypatch.setenv("COINSTREAM_ALLOW_PLAINTEXT_DATABASE", "true")
    assert settings().environment == "production"
    # Encrypted but unverified is not what the exemption is for: a man in the middle reads it all the same.
    monkeypatch.setenv(variable, "postgresql://svc@postgres:5432/db?sslmode=require")
    assert f"{variable} must have sslmode=verify-full" in refusal(settings)
    monkeypatch.setenv(variable, "postgresql://svc@postgres:5432/db?sslmode=disable")
    monkeypatch.delenv("COINSTREAM_GRPC_TLS_CERT_FILE")
    assert "COINSTREAM_GRPC_TLS_CERT_FILE" in refusal(settings)


def test_a_refused_service_exits_naming_the_settings_without_a_traceback_or_a_secret() -> None:
    env = {"PATH": "/usr/bin:/bin", "COINSTREAM_ENVIRONMENT": "production", "COINSTREAM_AUTH_SECRET": "tiny-secret"}
    finished = subprocess.run(
        [sys.executable, "-m", "services.wallet"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 1
    assert "COINSTREAM_AUTH_SECRET is shorter than 32 bytes" in finished.stderr
    assert "COINSTREAM_PAYMENT_PROVIDER is the sandbox" in finished.stderr
    assert "Traceback" not in finished.stderr and "tiny-secret" not in finished.stderr


@pytest.mark.parametrize("settings", SETTINGS)
def test_a_production_migration_needs_only_a_verified_database_connection(
    settings: type[RuntimeSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`migrate` (the migration Job) is given its database URL and nothing to serve with: no certificates, NATS
    login or token. Production still refuses it a database connection that does not verify the server."""
    monkeypatch.setenv("COINSTREAM_ENVIRONMENT", "production")
    with migration_only():
        message = refusal(settings)
        assert "sslmode=verify-full" in message
        assert "TLS_CERT_FILE" not in message and "AUTH_SECRET" not in message and "NATS" not in message
        for name in ("WALLET", "GIFTS", "PAYOUTS"):
            monkeypatch.setenv(f"COINSTREAM_{name}_DATABASE_URL", VERIFIED_DSN.format(f"coinstream_{name.lower()}"))
        monkeypatch.setenv("COINSTREAM_AUTH_ALGORITHM", "RS256")  # gifts would otherwise want a wallet token
        assert settings().environment == "production"
    assert "TLS_CERT_FILE" in refusal(settings)  # serving still needs everything


def test_the_runtime_role_setting_takes_a_plain_role_name_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINSTREAM_DB_RUNTIME_ROLE", "coinstream_wallet")
    assert WalletSettings().db_runtime_role == "coinstream_wallet"
    for unsafe in ('x"; DROP TABLE postings; --', "Wallet", "a b", "x" * 64):
        monkeypatch.setenv("COINSTREAM_DB_RUNTIME_ROLE", unsafe)
        with pytest.raises(pydantic.ValidationError):
            WalletSettings()
