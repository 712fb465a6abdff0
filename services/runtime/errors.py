"""Application errors and their gRPC form: a status code plus google.rpc.ErrorInfo (domain "coinstream")
and, for bad input, google.rpc.BadRequest field violations."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import asyncpg
import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "coinstream"


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass
class AppError(Exception):
    """An error meant for the caller. Raised anywhere below a servicer; the interceptor turns it into a status."""

    code: grpc.StatusCode
    reason: str
    message: str
    field_violations: list[FieldViolation] = field(default_factory=list)
    # Sent as google.rpc.RetryInfo: when a retry may succeed (a rate limit's next token, shedding's back-off).
    retry_after_seconds: float | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def is_outcome(self) -> bool:
        """Whether this error is a final answer to a request, so an idempotent replay must give it again.

        Transient failures (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL…) are not: a retry may succeed."""
        return self.code in _OUTCOME_CODES

    def to_status(self) -> grpc.Status:
        answer: grpc.Status = rpc_status.to_status(self.to_rpc_status())  # grpcio-status is untyped (pyproject)
        return answer

    def to_rpc_status(self) -> status_pb2.Status:
        """As google.rpc.Status: what a call's status carries, for an answer inside a stream (SendGifts)."""
        details = [_pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN))]
        if self.field_violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in self.field_violations
                ]
            )
            details.append(_pack(bad_request))
        if self.retry_after_seconds is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(max(1_000_000, int(self.retry_after_seconds * 1e9)))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        return status_pb2.Status(code=_RPC_CODES[self.code], message=self.message, details=details)


_OUTCOME_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)

_RPC_CODES = {code: getattr(code_pb2, code.name) for code in grpc.StatusCode}


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


# A status travels in trailing metadata, which gRPC caps (8 KiB soft, 16 KiB hard by default): a batch of a thousand
# bad items reported in full would reach the caller as RESOURCE_EXHAUSTED from the transport, without its details.
MAX_REPORTED_VIOLATIONS = 20


def invalid_argument(violations: list[FieldViolation]) -> AppError:
    reported = violations[:MAX_REPORTED_VIOLATIONS]
    summary = "; ".join(f"{v.field}: {v.description}" for v in reported)
    if len(violations) > len(reported):
        summary += f"; and {len(violations) - len(reported)} more"
    return AppError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", f"invalid request: {summary}", reported)


def failed_precondition(reason: str, message: str) -> AppError:
    return AppError(grpc.StatusCode.FAILED_PRECONDITION, reason, message)


def not_found(reason: str, message: str) -> AppError:
    return AppError(grpc.StatusCode.NOT_FOUND, reason, message)


def already_exists(reason: str, message: str) -> AppError:
    return AppError(grpc.StatusCode.ALREADY_EXISTS, reason, message)


def unauthenticated(message: str) -> AppError:
    return AppError(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", message)


def permission_denied(message: str) -> AppError:
    return AppError(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", message)


def unavailable(reason: str, message: str) -> AppError:
    return AppError(grpc.StatusCode.UNAVAILABLE, reason, message)


# The database unreachable, restarting (its admin shutdown, crash recovery) or gone from under a query: the call did
# nothing it cannot redo, so the caller may retry it as it is.
DATABASE_UNAVAILABLE_ERRORS = (
    ConnectionError,  # refused, reset, broken pipe
    TimeoutError,  # the pool's acquire or a command timeout
    asyncpg.PostgresConnectionError,  # cannot connect now, connection does not exist
    asyncpg.exceptions.OperatorInterventionError,  # admin or crash shutdown
    # A connection a restart interrupted mid-operation ("another operation is in progress"): the pool's reset
    # terminates it when it is released, so a retry gets a fresh one.
    asyncpg.exceptions.InternalClientError,
)


NETWORK_ERRNOS = frozenset(
    {errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH}
)


def database_unavailable(error: Exception) -> AppError | None:
    """The caller's answer when error says the database cannot be reached right now, else None."""
    closed_under_us = isinstance(error, asyncpg.InterfaceError) and "closed" in str(error)
    # Some event loops report a refused connection as a plain OSError carrying the errno.
    network = isinstance(error, OSError) and error.errno in NETWORK_ERRNOS
    if isinstance(error, DATABASE_UNAVAILABLE_ERRORS) or closed_under_us or network:
        return unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; retry with the same request_id")
    return None


def rate_limited(message: str, retry_after_seconds: float) -> AppError:
    return AppError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", message, retry_after_seconds=retry_after_seconds
    )


def request_id_reused() -> AppError:
    return AppError(
        grpc.StatusCode.ALREADY_EXISTS,
        "REQUEST_ID_REUSED",
        "request_id was already used with a different request; use a new request_id",
    )
