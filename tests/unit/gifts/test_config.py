"""The gifts settings refuse, at start and by name, a value that would break the service."""

from __future__ import annotations

import annotated_types
import pytest
from pydantic import ValidationError

from services.gifts.config import GiftsSettings

NUMERIC_SETTINGS = [
    name
    for name, info in GiftsSettings.model_fields.items()
    if name.startswith("gifts_") and info.annotation in (int, float)
]


def bounds(name: str) -> tuple[bool, bool]:
    metadata = GiftsSettings.model_fields[name].metadata
    lower = any(isinstance(m, annotated_types.Ge | annotated_types.Gt) for m in metadata)
    upper = any(isinstance(m, annotated_types.Le | annotated_types.Lt) for m in metadata)
    return lower, upper


@pytest.mark.parametrize("name", NUMERIC_SETTINGS)
def test_every_numeric_setting_declares_its_bounds(name: str) -> None:
    assert bounds(name) == (True, True)


@pytest.mark.parametrize(
    "name",
    [
        "gifts_wallet_timeout_seconds",
        "gifts_recovery_interval_seconds",
        "gifts_recovery_age_seconds",
        "gifts_relay_interval_seconds",
        "gifts_feed_max_watchers",
        "gifts_feed_watcher_queue_size",
        "gifts_match_finish_interval_seconds",
    ],
)
def test_zero_is_refused_naming_the_setting(name: str) -> None:
    with pytest.raises(ValidationError, match=name):
        GiftsSettings(**{name: 0})
