"""Calling coinstream from Python: the three services' stubs on one channel each, call metadata with a token, the
contract's error details read off a failed call, and a wait until a service reports SERVING.

One set of helpers for every client this repository has: the `coinstream` CLI and its demo (devstack),
coinstream.testing's fixture, the tests. CallError is the one decoder of the contract's error details here (the
gifts service's wallet client needs only the status code of a failed call)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple, cast

import grpc
from coinstream.gifts.v1 import gifts_pb2_grpc
from coinstream.payouts.v1 import payouts_pb2_grpc
from coinstream.wallet.v1 import wallet_pb2_grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.auth import mint_token

Metadata = tuple[tuple[str, str], ...]
SERVICES = ("wallet", "gifts", "payouts")
# Where gRPC carries the google.rpc.Status with the details (ErrorInfo, BadRequest, RetryInfo) of a failed call.
STATUS_DETAILS_KEY = "grpc-status-details-bin"

# Retrying UNAVAILABLE (e.g. a service still warming up) is safe for coinstream's calls: each mutating request
# carries a request_id, so a retried request cannot move coins twice.
RETRYING_CHANNEL_OPTIONS = (
    ("grpc.enable_retries", 1),
    (
        "grpc.service_config",
        json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [{}],
                        "retryPolicy": {
                            "maxAttempts": 5,
                            "initialBackoff": "0.2s",
                            "maxBackoff": "2s",
                            "backoffMultiplier": 2,
                            "retryableStatusCodes": ["UNAVAILABLE"],
                        },
                    }
                ]
            }
        ),
    ),
)


# -- addresses, channels and stubs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Addresses:
    """host:port of each service."""

    wallet: str
    gifts: str
    payouts: str

    def by_service(self) -> dict[str, str]:
        return {"wallet": self.wallet, "gifts": self.gifts, "payouts": self.payouts}


@dataclass(frozen=True)
class Clients:
    """The three services' stubs: blocking on grpc channels, awaitable on grpc.aio ones."""

    wallet: wallet_pb2_grpc.WalletServiceStub
    gifts: gifts_pb2_grpc.GiftServiceStub
    payouts: payouts_pb2_grpc.PayoutServiceStub

    @classmethod
    def on(cls, channels: Mapping[str, grpc.Channel | grpc.aio.Channel]) -> Clients:
        """Stubs on a channel per service name (wallet, gifts, payouts)."""
        return cls(
            wallet=wallet_pb2_grpc.WalletServiceStub(channels["wallet"]),
            gifts=gifts_pb2_grpc.GiftServiceStub(channels["gifts"]),
            payouts=payouts_pb2_grpc.PayoutServiceStub(channels["payouts"]),
        )


@contextmanager
def connect(addresses: Addresses, *, retrying: bool = True) -> Iterator[Clients]:
    """Blocking stubs on one plaintext channel per service (channels are costly to make: keep them for the session),
    closed on exit. retrying: UNAVAILABLE calls are retried a few times with back-off (RETRYING_CHANNEL_OPTIONS)."""
    options = RETRYING_CHANNEL_OPTIONS if retrying else ()
    channels = {
        name: grpc.insecure_channel(address, options=options) for name, address in addresses.by_service().items()
    }
    try:
        yield Clients.on(channels)
    finally:
        for channel in channels.values():
            channel.close()


# -- tokens --------------------------------------------------------------------------------------------------


def bearer(token: str) -> Metadata:
    """Call metadata carrying a token: `stub.Rpc(request, metadata=bearer(token))`."""
    return (("authorization", f"Bearer {token}"),)


def signed_metadata(secret: str, subject: str, *roles: str, ttl_seconds: int = 3600) -> Metadata:
    """Call metadata with a fresh HS256 token (development and tests) for subject with roles (`user` when none)."""
    return bearer(mint_token(secret, subject, list(roles or ("user",)), ttl_seconds))


# -- errors --------------------------------------------------------------------------------------------------


class FieldViolation(NamedTuple):
    field: str
    description: str


@dataclass(frozen=True)
class CallError:
    """A failed call as the contract describes it (docs: Errors): the status code, the ErrorInfo reason and domain
    (None when the error has none, e.g. from the transport), the message, BadRequest's field violations and
    RetryInfo's delay."""

    code: grpc.StatusCode
    reason: str | None
    domain: str | None
    message: str
    field_violations: tuple[FieldViolation, ...] = ()
    retry_delay_seconds: float | None = None

    @classmethod
    def of(cls, error: grpc.RpcError) -> CallError:
        """Reads a failed call, blocking or grpc.aio."""
        reason = domain = None
        violations: list[FieldViolation] = []
        retry_delay = None
        for detail in _status_details(error):
            info, bad_request, retry = (
                error_details_pb2.ErrorInfo(),
                error_details_pb2.BadRequest(),
                error_details_pb2.RetryInfo(),
            )
            if detail.Unpack(info):
                reason, domain = info.reason, info.domain
            elif detail.Unpack(bad_request):
                violations += [FieldViolation(v.field, v.description) for v in bad_request.field_violations]
            elif detail.Unpack(retry):
                retry_delay = retry.retry_delay.ToNanoseconds() / 1e9
        return cls(error.code(), reason, domain, error.details() or "", tuple(violations), retry_delay)

    @property
    def violated_fields(self) -> set[str]:
        return {violation.field for violation in self.field_violations}

    def describe(self) -> str:
        """One line for a person, e.g. `FAILED_PRECONDITION INSUFFICIENT_COINS: balance 10, price 99`."""
        return f"{self.code.name} {self.reason or self.code.name}: {self.message}"


def _status_details(error: grpc.RpcError) -> list[any_pb2.Any]:
    # (key, value) pairs: named tuples on a blocking call, plain tuples on grpc.aio (the stub types only the former,
    # and not as a tuple).
    pairs = cast("Iterable[tuple[str, str | bytes]]", error.trailing_metadata() or ())
    for key, value in pairs:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return list(status_pb2.Status.FromString(value).details)
    return []


# -- health --------------------------------------------------------------------------------------------------


class NotServingError(TimeoutError):
    """A service did not report SERVING in time; last_status is what it said last (UNREACHABLE: nothing answered)."""

    def __init__(self, address: str, last_status: str, timeout_seconds: float) -> None:
        super().__init__(f"{address} not SERVING after {timeout_seconds:.0f} s (last: {last_status})")
        self.last_status = last_status


def _keep_waiting() -> None:
    """The default check between polls: nothing ends the wait early."""


def wait_until_serving(
    address: str,
    *,
    timeout_seconds: float,
    credentials: grpc.ChannelCredentials | None = None,
    still_starting: Callable[[], None] = _keep_waiting,
    poll_seconds: float = 0.1,
) -> None:
    """Polls address's grpc.health.v1 service until it reports SERVING; NotServingError when timeout_seconds pass.
    still_starting runs after every poll that did not find it SERVING and raises to give up early (say, the
    server's process has exited).
    credentials: TLS for a server that requires it (plaintext without)."""
    deadline = time.monotonic() + timeout_seconds
    with _channel(address, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while (status := _health_status(stub)) != "SERVING":
            still_starting()
            if time.monotonic() > deadline:
                raise NotServingError(address, status, timeout_seconds)
            time.sleep(poll_seconds)


def _channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.Channel:
    return grpc.insecure_channel(address) if credentials is None else grpc.secure_channel(address, credentials)


def _health_status(stub: health_pb2_grpc.HealthStub) -> str:
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
    except grpc.RpcError as error:
        # UNAVAILABLE / DEADLINE_EXCEEDED: nothing answered yet, the usual state while a server starts.
        unreachable = error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        return "UNREACHABLE" if unreachable else error.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))  # grpc_health has no types
