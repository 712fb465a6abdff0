"""Every numeric wallet setting declares its bounds: a value that would break the service is refused at start,
naming the setting."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.wallet.config import WalletSettings


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
    ],
)
def test_a_setting_out_of_its_bounds_is_refused_by_name(setting: str, value: float) -> None:
    with pytest.raises(ValidationError) as refused:
        WalletSettings.model_validate({setting: value})
    assert [error["loc"] for error in refused.value.errors()] == [(setting,)]


def test_the_defaults_are_within_bounds() -> None:
    settings = WalletSettings()
    assert settings.wallet_recovery_interval_seconds > 0 and settings.wallet_payment_timeout_seconds > 0
