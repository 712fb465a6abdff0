"""Page tokens for every list the services serve: opaque to callers, bound to the list (kind) and to the owner it
was handed out for, so a token cannot page through another account's history or another list. The position is
what the store resumes after (an id, a moment in microseconds, a text key), checked on the way back in against the
shape the list expects and what the database can hold: a forged token gets INVALID_ARGUMENT, never a database
error."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.runtime.errors import FieldViolation, invalid_argument
from services.runtime.limits import MAX_INT64

# What the servicers accept as page_token (the longest position: a few text keys of up to MAX_POSITION_TEXT).
MAX_PAGE_TOKEN_LENGTH = 1024
MAX_POSITION_TEXT = 256
BIGINT_RANGE = (-MAX_INT64 - 1, MAX_INT64)

Position = list[str | int]
Item = TypeVar("Item")


@dataclass(frozen=True)
class Page(Generic[Item]):
    """One page of a list: its items and the token of the next page ("" on the last page)."""

    items: list[Item]
    next_page_token: str


def encode_page_token(kind: str, owner: str, position: Position) -> str:
    payload = json.dumps({"k": kind, "o": owner, "p": position}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode()


def decode_page_token(
    token: str,
    *,
    kind: str,
    owner: str,
    shape: tuple[type, ...],
    int_range: tuple[int, int] = BIGINT_RANGE,
    legacy_kind: str | None = None,
) -> Position | None:
    """None for the first page (no token); the position of a token handed out for this list and owner; otherwise
    INVALID_ARGUMENT on page_token (another list's or owner's token, a forged or truncated one).

    Tokens of release 0.1.0 are read too, so that a client paging across the upgrade goes on (drop this after the
    next release): the payouts' (JSON, the owner under "c") and the wallet's ("<legacy_kind>:<id>", unbound)."""
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        position = _legacy_position(text, legacy_kind) if legacy_kind and not text.startswith("{") else None
        if position is None:
            payload = json.loads(text)
            bound = payload["k"] == kind and payload.get("o", payload.get("c")) == owner
            position = payload["p"] if bound else None
        if isinstance(position, list) and _has_shape(position, shape, int_range):
            return position
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError):
        pass
    raise invalid_argument([FieldViolation("page_token", "is not a token returned by this API for this request")])


def _legacy_position(text: str, legacy_kind: str) -> Position | None:
    found_kind, _, value = text.partition(":")
    if found_kind == legacy_kind and value.isascii() and value.isdigit():
        return [int(value)]
    return None


def _has_shape(position: Sequence[object], shape: tuple[type, ...], int_range: tuple[int, int]) -> bool:
    return len(position) == len(shape) and all(
        type(value) is expected and _storable(value, int_range) for value, expected in zip(position, shape, strict=True)
    )


def _storable(value: object, int_range: tuple[int, int]) -> bool:
    """Within what the database holds: a bigint (or the narrower range asked, e.g. a datetime's microseconds), or a
    bounded text PostgreSQL can store (no NUL, no lone surrogate)."""
    if isinstance(value, int):
        return int_range[0] <= value <= int_range[1]
    return (
        isinstance(value, str)
        and len(value) <= MAX_POSITION_TEXT
        and "\x00" not in value
        and not any("\ud800" <= character <= "\udfff" for character in value)
    )
