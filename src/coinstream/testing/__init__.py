"""coinstream for another backend's integration tests (`pip install coinstream[testing]`).

The pytest plugin (coinstream.testing.plugin, registered by the package) starts one coinstream for the test session
and gives the tests its addresses, a token factory and typed clients:

    def test_a_fan_buys_coins(coinstream):
        service = coinstream.token("my-backend", "service")
        ...coinstream.clients.wallet.PurchaseCoins(..., metadata=service)

Two flavours (`--coinstream-flavour`, or COINSTREAM_TESTING_FLAVOUR):
- `processes` (the default): PostgreSQL and nats-server from their wheels and the three services as processes of
  this Python, on free ports; no Docker needed.
- `containers`: the coinstream image, PostgreSQL and NATS containers on a network of their own (testcontainers);
  the images are settings (COINSTREAM_TESTING_IMAGE, COINSTREAM_TESTING_POSTGRES_IMAGE, COINSTREAM_TESTING_NATS_IMAGE).

Both run coinstream in development mode: plaintext on loopback, HS256 tokens signed with a secret made for the
session, the sandbox payment and payout providers (payment token "tok_ok…" succeeds, "tok_declined…" fails)."""

from __future__ import annotations

from typing import Any

__all__ = ["Coinstream", "CoinstreamClients", "start"]


def __getattr__(name: str) -> Any:
    """Imported when used: pytest loads this package's plugin in every run, and the plugin needs none of it then."""
    if name in __all__:
        from coinstream.testing import running

        return getattr(running, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
