"""A running coinstream, whichever way it was started: its addresses, tokens for it, and typed clients."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property

import grpc

from coinstream.client import SERVICES, Clients, Metadata, signed_metadata
from coinstream.testing.plugin import FLAVOURS

# Blocking gRPC stubs of the three services (grpc.aio users: Coinstream.aio_channel).
CoinstreamClients = Clients


@dataclass
class Coinstream:
    """A coinstream for a test session. Addresses are host:port on this machine, in plaintext (development mode)."""

    wallet_address: str
    gifts_address: str
    payouts_address: str
    # Where its NATS JetStream listens on this machine (the GIFTS stream: gifts.v1.* events), and a login that may
    # read it (empty when the server takes anonymous clients, as in the containers flavour).
    nats_url: str
    auth_secret: str
    flavour: str
    nats_user: str = ""
    nats_password: str = ""
    _channels: list[grpc.Channel] = field(default_factory=list, repr=False)

    def address(self, service: str) -> str:
        return {"wallet": self.wallet_address, "gifts": self.gifts_address, "payouts": self.payouts_address}[service]

    def token(self, subject: str, *roles: str, ttl_seconds: int = 3600) -> str:
        """A signed JWT for subject with roles (`user`, `service`, `admin`; `user` when none is given)."""
        from services.runtime.auth import mint_token

        return mint_token(self.auth_secret, subject, list(roles or ("user",)), ttl_seconds)

    def metadata(self, subject: str, *roles: str) -> Metadata:
        """Call metadata with a token: `stub.Rpc(request, metadata=coinstream.metadata("my-backend", "service"))`."""
        return signed_metadata(self.auth_secret, subject, *roles)

    @cached_property
    def clients(self) -> Clients:
        return Clients.on({service: self._channel(service) for service in SERVICES})

    def aio_channel(self, service: str) -> grpc.aio.Channel:
        """A grpc.aio channel to a service, made on the running event loop; the caller closes it."""
        return grpc.aio.insecure_channel(self.address(service))

    def _channel(self, service: str) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address(service))
        self._channels.append(channel)
        return channel

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


@contextmanager
def start(flavour: str = "processes") -> Iterator[Coinstream]:
    """Starts a coinstream (see the package's docstring for the flavours) and stops it, data included, on exit."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown coinstream flavour {flavour!r}: use one of {', '.join(FLAVOURS)}")
    auth_secret = secrets.token_hex(32)
    if flavour == "processes":
        from coinstream.testing.processes import run_processes as run
    else:
        from coinstream.testing.containers import run_containers as run
    with run(auth_secret) as running:
        try:
            yield running
        finally:
            running.close()
