"""The pytest plugin of coinstream.testing, registered by the coinstream package (entry point pytest11): the session
fixture `coinstream`. Nothing starts unless a test asks for it, and nothing but pytest is imported until then: the
plugin is loaded by every pytest run of an environment where coinstream is installed, with the extra or not."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from coinstream.testing.running import Coinstream

FLAVOURS = ("processes", "containers")
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
    try:
        from coinstream.testing.running import start
    except ImportError as missing:
        raise pytest.UsageError(f"the coinstream fixture needs coinstream[testing] installed ({missing})") from None
    with start(flavour) as running:
        yield running
