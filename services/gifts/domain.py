"""Gift rules with no I/O: who may go live, when a gift may be sent, what it costs, and which wallet answers are
final. A gift is a saga across two services: recorded here as pending, paid by a wallet spend whose request_id is
derived from the gift, then completed (or failed) here. Retrying the spend with the same derived request_id makes
the wallet answer with its stored outcome, so a gift is never paid twice."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import grpc

from services.runtime.errors import AppError, failed_precondition, not_found

MIN_QUANTITY = 1
MAX_QUANTITY = 10_000
MAX_TITLE_LENGTH = 200
TOP_GIFTERS_LIMIT = 10
# The wallet's spend request_id and reference for a gift, e.g. "gift:gtx_0f3c…".
WALLET_SPEND_PREFIX = "gift:"
# Codes with which the wallet refuses a spend for good (with ErrorInfo: INSUFFICIENT_COINS, ACCOUNT_FROZEN, …).
# Anything else (UNAVAILABLE, DEADLINE_EXCEEDED, a bad token…) may not have been decided yet: the gift stays pending.
FINAL_WALLET_REFUSAL_CODES = frozenset({grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND})


class StreamStatus(Enum):
    LIVE = "live"
    ENDED = "ended"


class GiftStatus(Enum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class CatalogGift:
    gift_id: str
    name: str
    coin_price: int


@dataclass(frozen=True)
class LiveStream:
    stream_id: str
    creator_id: str
    title: str
    status: StreamStatus


@dataclass(frozen=True)
class WalletAccount:
    """What the gifts service needs to know about a wallet account."""

    account_id: str
    adult_verified: bool


def require_can_go_live(account: WalletAccount | None, creator_id: str) -> None:
    """The contract: a stream's creator must be an adult-verified account."""
    if account is None or not account.adult_verified:
        raise failed_precondition("ACCOUNT_NOT_ELIGIBLE", f"account {creator_id!r} is not an adult-verified account")


def stream_already_live(creator_id: str) -> AppError:
    return failed_precondition("STREAM_ALREADY_LIVE", f"creator {creator_id!r} already has a live stream")


def stream_not_found(stream_id: str) -> AppError:
    return not_found("STREAM_NOT_FOUND", f"no stream {stream_id!r}")


def require_stream(stream: LiveStream | None, stream_id: str) -> LiveStream:
    if stream is None:
        raise stream_not_found(stream_id)
    return stream


def require_giftable(
    stream: LiveStream | None, stream_id: str, gift: CatalogGift | None, gift_id: str, sender_id: str
) -> tuple[LiveStream, CatalogGift]:
    """A gift goes to a live stream, is in the active catalog and is not sent by the stream's own creator."""
    stream = require_stream(stream, stream_id)
    if stream.status is not StreamStatus.LIVE:
        raise failed_precondition("STREAM_NOT_LIVE", f"stream {stream_id!r} has ended")
    if gift is None:
        raise not_found("GIFT_NOT_FOUND", f"no gift {gift_id!r} in the catalog")
    if sender_id == stream.creator_id:
        raise failed_precondition("SELF_GIFT", "creators cannot send gifts to their own stream")
    return stream, gift


def gift_coins(coin_price: int, quantity: int) -> int:
    assert coin_price > 0, f"gift price must be positive, got {coin_price}"
    assert MIN_QUANTITY <= quantity <= MAX_QUANTITY, f"quantity out of range: {quantity}"
    return coin_price * quantity


def wallet_spend_request_id(gift_transaction_id: str) -> str:
    """The same for every attempt at paying one gift: that is what makes paying it idempotent."""
    return WALLET_SPEND_PREFIX + gift_transaction_id


def is_final_wallet_refusal(error: AppError) -> bool:
    return error.code in FINAL_WALLET_REFUSAL_CODES
