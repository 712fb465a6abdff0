"""The pytest plugin of coinstream.testing, registered by the coinstream package (entry point pytest11): the session
fixture `coinstream`. Nothing starts unless a test asks for it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from coinstream.testing.running import FLAVOURS, Coinstream, start

FLAVOUR_SETTING = "COINSTREAM_TESTING_FLAVOUR"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("coinstream", "coinstream for integration tests (coinstream.testing)")
    group.addoption(
        "--coinstream-flavour",
        choices=FLAVOURS,
        default=None,
        help=f"how the `coinstream` fixture runs coinstream: processes (default) or containers; also {FLAVOUR_SETTING}",
    )
    parser.addini("coinstream_flavour", "processes (default) or containers", default="")


@pytest.fixture(scope="session")
def coinstream(request: pytest.FixtureRequest) -> Iterator[Coinstream]:
    """A coinstream for the whole test session: `.clients` (wallet, gifts, payouts stubs), `.metadata(subject,
    *roles)` (a token for a call), the addresses. Tests share it: give each test ids of its own."""
    flavour = (
        request.config.getoption("--coinstream-flavour")
        or os.environ.get(FLAVOUR_SETTING)
        or request.config.getini("coinstream_flavour")
        or "processes"
    )
    with start(flavour) as running:
        yield running
