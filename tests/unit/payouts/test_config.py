"""Payouts settings that would break the service are refused at start, naming the setting."""

from __future__ import annotations

import pydantic
import pytest

from services.payouts.config import PayoutsSettings


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("COINSTREAM_PAYOUTS_SETTLEMENT_BATCH_SIZE", "0"),
        ("COINSTREAM_PAYOUTS_WORKER_INTERVAL_SECONDS", "0"),
        ("COINSTREAM_PAYOUTS_MATURITY_BATCH_SIZE", "0"),
        ("COINSTREAM_PAYOUTS_RATE_DENOMINATOR", "0"),
        ("COINSTREAM_PAYOUTS_RATE_NUMERATOR", "10000000"),
        ("COINSTREAM_PAYOUTS_PROVIDER_TIMEOUT_SECONDS", "-1"),
        ("COINSTREAM_DIAMOND_HOLD_SECONDS", "-5"),
    ],
)
def test_a_setting_out_of_its_bounds_is_refused_by_name(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(pydantic.ValidationError) as refused:
        PayoutsSettings()
    assert variable.removeprefix("COINSTREAM_").lower() in str(refused.value)


def test_the_minimum_withdrawal_must_fit_within_the_daily_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COINSTREAM_PAYOUTS_MINIMUM_WITHDRAWAL_DIAMONDS", "300000")
    with pytest.raises(pydantic.ValidationError) as refused:
        PayoutsSettings()
    assert "COINSTREAM_PAYOUTS_MINIMUM_WITHDRAWAL_DIAMONDS" in str(refused.value)


def test_the_defaults_are_within_bounds() -> None:
    PayoutsSettings()
