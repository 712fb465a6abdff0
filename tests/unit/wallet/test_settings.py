"""Every numeric wallet setting declares its bounds: a value that would break the service is refused at start,
naming the setting."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.wallet.config import WalletSettings
from services.wallet.domain import DeclineLimits


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("wallet_port", 0),
        ("wallet_port", 65536),
        ("wallet_metrics_port", -1),
        ("wallet_recovery_interval_seconds", 0),
        ("wallet_recovery_age_seconds", 0),
        ("wallet_payment_timeout_seconds", 0),
        ("grpc_max_connection_age_seconds", -1),
        ("wallet_max_declines_per_account", -1),
        ("wallet_max_declines_per_account", 1001),
        ("wallet_max_declines_per_caller", -1),
        ("wallet_max_declines_per_caller", 10_001),
    ],
)
def test_a_setting_out_of_its_bounds_is_refused_by_name(setting: str, value: float) -> None:
    with pytest.raises(ValidationError) as refused:
        WalletSettings.model_validate({setting: value})
    assert [error["loc"] for error in refused.value.errors()] == [(setting,)]


def test_the_defaults_are_within_bounds() -> None:
    settings = WalletSettings()
    assert settings.wallet_recovery_interval_seconds > 0 and settings.wallet_payment_timeout_seconds > 0


def test_card_testing_limits_hold_each_account_and_leave_callers_alone_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One account is blocked whoever acts for it; a backend acting for millions of users is not blocked by a daily
    count of its users' declines unless an operator sets one."""
    for name in ("COINSTREAM_WALLET_MAX_DECLINES_PER_ACCOUNT", "COINSTREAM_WALLET_MAX_DECLINES_PER_CALLER"):
        monkeypatch.delenv(name, raising=False)
    assert WalletSettings().decline_limits() == DeclineLimits(per_account=5, per_caller=0)
    monkeypatch.setenv("COINSTREAM_WALLET_MAX_DECLINES_PER_CALLER", "500")
    assert WalletSettings().decline_limits() == DeclineLimits(per_account=5, per_caller=500)
