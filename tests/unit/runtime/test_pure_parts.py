"""The runtime's pure parts: request hashing, validation, token checks, error details."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from coinstream.wallet.v1 import wallet_pb2
from google.rpc import error_details_pb2, status_pb2

from services.runtime.auth import Principal, TokenVerifier, mint_token
from services.runtime.config import RuntimeSettings
from services.runtime.errors import AppError, FieldViolation, database_unavailable, invalid_argument
from services.runtime.requests import RequestKey, fingerprint
from services.runtime.validation import Validator, page_size

SECRET = "unit-test-secret-that-is-32-bytes-or-more"


class _Settings(RuntimeSettings):
    @property
    def service_name(self) -> str:
        return "unit"


def test_a_request_fingerprint_depends_on_method_and_payload() -> None:
    spend = wallet_pb2.SpendCoinsRequest(request_id="r", account_id="a", coins=5)
    assert fingerprint("SpendCoins", spend) == fingerprint("SpendCoins", spend)
    assert fingerprint("SpendCoins", spend) != fingerprint("Other", spend)
    other = wallet_pb2.SpendCoinsRequest(request_id="r", account_id="a", coins=6)
    assert fingerprint("SpendCoins", spend) != fingerprint("SpendCoins", other)
    assert RequestKey.of(spend) == RequestKey("r", "SpendCoins", fingerprint("SpendCoins", spend))


def test_validator_collects_every_violation() -> None:
    check = Validator()
    check.request_id("bad id!")
    check.identifier("", "account_id")
    check.int_range(0, "quantity", minimum=1, maximum=10)
    size = page_size(check, 0)
    assert size == 50
    with pytest.raises(AppError) as caught:
        check.raise_if_invalid()
    assert [v.field for v in caught.value.field_violations] == ["request_id", "account_id", "quantity"]


def test_token_verifier_accepts_good_tokens_and_refuses_the_rest() -> None:
    verifier = TokenVerifier(_Settings(auth_secret=SECRET))
    principal = verifier.verify(f"Bearer {mint_token(SECRET, 'alice', ['user'])}")
    assert principal == Principal("alice", frozenset({"user"}))
    for header in (
        None,
        "",
        "Bearer",
        f"Token {mint_token(SECRET, 'a', ['user'])}",
        f"Bearer {mint_token(SECRET, 'a', ['user'], ttl_seconds=-60)}",  # past the 30 s leeway
        f"Bearer {mint_token(SECRET, 'a', ['superuser'])}",
    ):
        with pytest.raises(AppError) as caught:
            verifier.verify(header)
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_errors_carry_error_info_and_bad_request() -> None:
    error = invalid_argument([FieldViolation("coins", "must be positive")])
    status = error.to_status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    key, value = status.trailing_metadata[0]
    assert key == "grpc-status-details-bin"
    decoded = status_pb2.Status.FromString(value)
    info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    decoded.details[0].Unpack(info)
    decoded.details[1].Unpack(bad_request)
    assert (info.domain, info.reason) == ("coinstream", "INVALID_ARGUMENT")
    assert [(v.field, v.description) for v in bad_request.field_violations] == [("coins", "must be positive")]


def test_only_final_errors_are_replayed() -> None:
    assert AppError(grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_COINS", "").is_outcome
    assert not AppError(grpc.StatusCode.UNAVAILABLE, "WALLET_UNAVAILABLE", "").is_outcome


def test_an_unreachable_database_is_unavailable_to_the_caller_and_a_bug_is_not() -> None:
    refused = database_unavailable(ConnectionRefusedError(111, "Connection refused"))
    assert refused is not None
    assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE")
    assert database_unavailable(asyncpg.exceptions.CannotConnectNowError("the database system is starting up"))
    assert database_unavailable(asyncpg.exceptions.AdminShutdownError("terminating connection"))
    assert database_unavailable(OSError(111, "Connect call failed ('127.0.0.1', 5432)"))  # the errno, not the type
    assert database_unavailable(FileNotFoundError(2, "not the database")) is None
    assert database_unavailable(ValueError("a bug")) is None
    assert database_unavailable(asyncpg.exceptions.UniqueViolationError("a bug too")) is None


@pytest.mark.parametrize(
    ("text", "violation"),
    [
        ("Friday night 🎉", None),
        ("Family 👨\u200d👩\u200d👧 and ❤\ufe0f\u200d🔥", None),  # zero-width joiners inside emoji sequences
        ("Ünïcödé, 日本語, عربي", None),
        ("x\x85y", "must not contain control characters"),  # C1 (NEXT LINE)
        ("x\x00y", "must not contain control characters"),
        ("abc\u202egnp.exe", "must not contain invisible or text-reordering characters"),  # right-to-left override
        ("a\u2066b\u2069", "must not contain invisible or text-reordering characters"),  # isolates
        ("top\u200bfan", "must not contain invisible or text-reordering characters"),  # zero-width space
        ("a\u200db", "must not contain invisible or text-reordering characters"),  # a joiner between letters
        ("\ufeffhello", "must not contain invisible or text-reordering characters"),
        # Invisible too (the fuzzer's display-text check, test_fuzz.py): soft hyphen, combining grapheme joiner,
        # Mongolian vowel separator, a deprecated format control, interlinear annotation, musical formatting.
        ("fr\u00adee coins", "must not contain invisible or text-reordering characters"),
        ("a\u034fb", "must not contain invisible or text-reordering characters"),
        ("a\u180eb", "must not contain invisible or text-reordering characters"),
        ("a\u206ab", "must not contain invisible or text-reordering characters"),
        ("a\ufff9b\ufffac\ufffb", "must not contain invisible or text-reordering characters"),
        ("a\U0001d173b", "must not contain invisible or text-reordering characters"),
    ],
)
def test_display_text_refuses_controls_reordering_and_invisible_characters_but_keeps_emoji(
    text: str, violation: str | None
) -> None:
    check = Validator()
    check.text(text, "title", max_length=200)
    assert [v.description for v in check.violations] == ([violation] if violation else [])


def test_the_metrics_host_defaults_to_loopback_whatever_the_grpc_host() -> None:
    assert _Settings().metrics_host == "127.0.0.1"
    assert _Settings(grpc_host="0.0.0.0").metrics_host == "127.0.0.1"  # serving gRPC widely does not widen /metrics
