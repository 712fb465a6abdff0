"""Property-based fuzzing of every RPC of the three running services (hypothesis).

Every RPC is enumerated from the generated service descriptors and its requests are drawn from strategies derived
from its request message descriptor, so a new RPC or field is fuzzed without touching this file (a new RPC fails
test_every_rpc_is_classified until EFFECTS says whether it moves money; a field of a type without a strategy fails
loudly). Field kinds:

- strings: by name, ids made in setup or by earlier successful calls (accounts, streams, purchases, withdrawals,
  promotions, gifts, page tokens: Ref, picked at call time), valid-looking ids, fresh and replayed request_ids,
  plausible display text with emoji; and for any string "junk": empty, up to 5,000 characters, at the documented
  limits, C0/C1 controls, bidi overrides and isolates, zero-width characters, emoji and ZWJ sequences, injection;
- integers: int64/int32 edges, small values, values at the documented bounds of fields of that name; enums: known
  and unknown numbers; repeated fields: empty, a few, 1,000 and 1,001 elements; timestamps: unset, near now, before
  year 1, after year 9999, negative or overflowing nanos;
- page tokens: real ones of this and other lists and accounts, tampered, forged (our own formats with positions out of
  range), random bytes, huge (and test_every_page_token_is_served_or_refused sends every one of them to every list);
- raw bytes that do not parse as the request type (test_fuzz_rpc_wire).

A request is plausible (often valid), plausible but for one field, or anything at all; it is sent by the owner of the
account it names, another user, a service, an admin or nobody. Every call must:

- never end INTERNAL or UNKNOWN (an unexpected exception), nor DEADLINE_EXCEEDED after 10 s (a hang);
- carry an ErrorInfo when it fails, and for INVALID_ARGUMENT a BadRequest with at least one field violation;
- move no money when it fails: around every refused call of a money-moving RPC the coins and diamonds of the fuzz
  accounts are read (GetBalance, GetEarnings) and must not have changed. Asynchronous effects of successful calls
  (settlement of a gift, a payout failing) are waited for, so they never count against the next call.

What the rest of the suite shares is left as it was: the seeded catalog and the default promotion are never touched, a
promotion or gift the fuzzer made is ended or retired at once, a fuzz account it changed is restored.
test_display_text_refuses_controls_bidi_and_invisible_characters_but_keeps_emoji checks every display-text field end
to end. The money identities across the three databases are checked at the end of the file
(test_money_identities_hold_after_fuzzing) and again by the session's stack fixture (tests/conftest.py).

Hypothesis drives plain synchronous gRPC channels: @given wraps a synchronous test, and pytest-asyncio's session loop
is not running while a synchronous test runs, so blocking calls neither need nor disturb it. Examples are derandomized
(the same every run) and no example database is written.

COINSTREAM_FUZZ_EXAMPLES: examples per RPC (default 25, about 30 s for the file on two cores; a fifth as many
raw-bytes examples), e.g. 500 for a long local run. COINSTREAM_FUZZ_SEED=<n>: random examples from that seed instead
of the derandomized ones. COINSTREAM_FUZZ_STATS=1 (with pytest -s): the outcomes per RPC and reason."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2
from coinstream.payouts.v1 import payouts_pb2
from coinstream.wallet.v1 import wallet_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

from services.runtime.auth import mint_token
from tests.support.errors import error_reason, violated_fields
from tests.support.invariants import all_violations
from tests.support.stack import AUTH_SECRET, Stack

EXAMPLES = int(os.environ.get("COINSTREAM_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("COINSTREAM_FUZZ_SEED")
CALL_TIMEOUT_SECONDS = 10.0
SETTLE_SECONDS = 15.0
RUN = uuid.uuid4().hex[:8]  # ids made by this run

PROTO_MODULES = (wallet_pb2, gifts_pb2, payouts_pb2)
SERVICE_ADDRESS = {"WalletService": "wallet", "GiftService": "gifts", "PayoutService": "payouts"}

# What an RPC may change, so the fuzzer knows what to check around it (a new RPC must be put here).
READ, STATE, MONEY = "read", "state", "money"
EFFECTS = {
    "coinstream.wallet.v1.WalletService": {
        "UpsertAccount": STATE,
        "GetAccount": READ,
        "GetBalance": READ,
        "ListCoinPackages": READ,
        "PurchaseCoins": MONEY,
        "SpendCoins": MONEY,
        "SpendCoinsBatch": MONEY,
        "ListTransactions": READ,
        "CreatePromotion": STATE,
        "ListPromotions": READ,
        "EndPromotion": STATE,
        "ReversePurchase": MONEY,
        "CreateGiveaway": MONEY,
        "SetSpendingLimit": STATE,
    },
    "coinstream.gifts.v1.GiftService": {
        "ListGifts": READ,
        "StartLiveStream": STATE,
        "EndLiveStream": STATE,
        "SendGift": MONEY,
        "GetStreamSummary": READ,
        "WatchStreamGifts": READ,
        "GetLeaderboard": READ,
        "UpsertGift": STATE,
        "RetireGift": STATE,
        "UpsertVideo": STATE,
        "GetVideoSummary": READ,
        "StartMatch": STATE,
        "GetMatch": READ,
        "SetStreamGoal": STATE,
    },
    "coinstream.payouts.v1.PayoutService": {
        "GetEarnings": READ,
        "GetRates": READ,
        "UpdateCreatorProfile": STATE,
        "RequestWithdrawal": MONEY,
        "GetWithdrawal": READ,
        "CancelWithdrawal": MONEY,
        "ListWithdrawals": READ,
        "ListEarnings": READ,
    },
}

# The suite shares one catalog and one default promotion: the fuzzer never changes them.
SEEDED_GIFT_IDS = frozenset(
    {"rose", "finger_heart", "doughnut", "hand_hearts", "corgi", "money_gun", "disco_ball", "lion", "universe"}
)
PROTECTED_PROMOTION_IDS = frozenset({"promo_default"})
PACKAGE_IDS = ("coins_65", "coins_330", "coins_660", "coins_1321", "coins_3303", "coins_6607", "coins_16500")

# Failures after which nothing may have moved. UNAVAILABLE may leave work that a recovery pass finishes (the request
# was valid; a retry with the same request_id completes it), so it is not among them.
REFUSALS = frozenset(grpc.StatusCode) - {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}
NEVER = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED})


# ---------------------------------------------------------------------------------------------------- the RPCs


@dataclass(frozen=True)
class Rpc:
    service: str  # full name
    method: MethodDescriptor

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def effect(self) -> str | None:
        return EFFECTS.get(self.service, {}).get(self.method.name)

    def __repr__(self) -> str:
        return self.path

    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)


# Fuzzed last: a spending limit the fuzzer lowers holds for 24 hours (raising it back waits as long), which would
# leave the gifts and spends after it refused for the fuzz accounts.
FUZZED_LAST = ("SetSpendingLimit",)


def all_rpcs() -> list[Rpc]:
    rpcs = [
        Rpc(service.full_name, method)
        for module in PROTO_MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]
    return sorted(rpcs, key=lambda rpc: rpc.name in FUZZED_LAST)


RPCS = all_rpcs()


def test_every_rpc_is_classified() -> None:
    """A new RPC is fuzzed automatically, but the fuzzer must know whether it moves money (EFFECTS)."""
    assert [rpc.path for rpc in RPCS if rpc.effect is None] == []
    assert not [rpc.path for rpc in RPCS if rpc.method.client_streaming], "client streams need a fuzz driver"


# ---------------------------------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class Ref:
    """An id made during setup or by earlier calls, picked when the call is made (the pools grow as calls succeed)."""

    kind: str
    index: int


@dataclass(frozen=True)
class Fresh:
    """A new valid request_id."""


FRESH = Fresh()

C0 = [chr(c) for c in range(0x20)] + ["\x7f"]
C1 = [chr(c) for c in range(0x80, 0xA0)]
BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f"]
BIDI += ["\u061c"]
ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\u2061", "\u2062", "\u2063", "\u2064", "\ufeff"]
EMOJI = [
    "🎉",
    "👍🏽",
    "🇺🇸",
    "1\ufe0f\u20e3",  # keycap
    "👨\u200d👩\u200d👧",  # family: zero-width joiners
    "❤\ufe0f\u200d🔥",
    "🏳\ufe0f\u200d🌈",
    "🧑🏽\u200d💻",
    "🐻\u200d❄\ufe0f",
    "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # a tag sequence (Scotland)
]
OTHER_TEXT = [
    "日本語",
    "عربي",
    "e\u0301",  # a combining mark
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "\ufffd",
    "\uffff",
    "\U0010ffff",
    "\ue000",
    " ",
    "\u3000",
    "\u2028",
    "\u00ad",
    "'; DROP TABLE accounts; --",
    "%s%n%x",
    "{0}{!r}",
    "${jndi:ldap://x}",
    "../../etc/passwd",
    "\\",
    "null",
    "NaN",
    "<script>",
    "gift:",
    "p:1",
]
PIECES = C0 + C1 + BIDI + ZERO_WIDTH + EMOJI + OTHER_TEXT + ["a", "Z", "0", "-", "_", ".", ":"]
LIMIT_LENGTHS = (63, 64, 65, 99, 100, 101, 127, 128, 129, 199, 200, 201, 255, 256, 257, 511, 512, 513)

INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
INT64_EDGES = [-(2**63), -(2**63) + 1, -(2**31) - 1, -(2**31), -1, 0, 1, 2, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1]
INT_HINTS = {  # near the documented bounds of fields of this name
    "quantity": [1, 9_999, 10_000, 10_001],
    "coins": [1, 65, 1_000, 10**10, 10**10 + 1],
    "diamonds": [1_999, 2_000, 2_001, 200_000, 200_001, 10**10, 10**10 + 1],
    "page_size": [0, 1, 50, 100, 101],
    "coins_per_winner": [1, 10**6, 10**6 + 1],
    "daily_coins": [0, 1, 10**10, 10**10 + 1],
    "bonus_percent": [1, 100, 101],
    "bonus_coins": [1, 10**6, 10**6 + 1],
    "min_package_coins": [0, 1_321, 10**10, 10**10 + 1],
    "max_uses_per_account": [0, 1, 10**6, 10**6 + 1],
    "coin_price": [1, 10**6, 10**6 + 1],
    # google.protobuf.Timestamp: from before year 1 to after year 9999.
    "seconds": [-62_135_596_801, -62_135_596_800, 0, 1_700_000_000, 4_102_444_800, 253_402_300_799, 253_402_300_800],
    "nanos": [-1, 0, 999_999_999, 1_000_000_000],
}
ENUM_EXTRA_NUMBERS = [-1, 99, 2**31 - 1, -(2**31)]

ACCOUNT_FIELDS = frozenset({"account_id", "sender_id", "creator_id", "winner_ids"})
REF_FIELDS = {
    "stream_id": "stream",
    "video_id": "video",
    "match_id": "match",
    "purchase_id": "purchase",
    "withdrawal_id": "withdrawal",
    "promotion_id": "promotion",
}


def junk_text(*, small: bool = False) -> st.SearchStrategy[str]:
    """Anything a client may send as a string: empty, huge, controls, bidi, zero-width, emoji, injection."""
    mixed = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), max_size=12).map("".join)
    at_limits = st.builds(lambda piece, n: piece * n, st.sampled_from(["a", "é", "🎉"]), st.sampled_from(LIMIT_LENGTHS))
    parts = [st.just(""), mixed, st.text(max_size=20), at_limits]
    if not small:
        parts.append(st.builds(lambda piece, n: (piece * n)[:n], st.sampled_from(PIECES), st.integers(1_000, 5_000)))
    return st.one_of(parts)


def identifiers() -> st.SearchStrategy[str]:
    return st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


def display_text() -> st.SearchStrategy[str]:
    """Titles, names, reasons: mostly text people write, emoji included."""
    words = st.sampled_from(["Friday", "live", "Ünïcödé", "日本語", "gift", "!", " ", "🔥"] + EMOJI)
    return st.lists(words, min_size=1, max_size=8).map("".join)


def string_strategy(name: str, *, small: bool) -> st.SearchStrategy[Any]:
    junk = junk_text(small=small)
    if name == "request_id":
        replayed = st.sampled_from([f"fuzz-replay-{RUN}-{n}" for n in range(3)])
        return st.one_of(
            st.just(FRESH), st.just(FRESH), replayed, st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True), junk
        )
    if name in ACCOUNT_FIELDS:
        return st.one_of(refs("account"), refs("account"), identifiers(), junk)
    if name in REF_FIELDS:
        return st.one_of(refs(REF_FIELDS[name]), refs(REF_FIELDS[name]), identifiers(), junk)
    if name == "gift_id":
        return st.one_of(st.sampled_from(sorted(SEEDED_GIFT_IDS)), refs("gift"), identifiers(), junk)
    if name == "package_id":
        return st.one_of(st.sampled_from(PACKAGE_IDS), junk)
    if name == "payment_token":
        return st.one_of(st.sampled_from(["tok_ok_fuzz", "tok_declined_fuzz", "tok_unknown"]), junk)
    if name == "payout_destination":
        # Never "sandbox:ok…": a payout that gets paid would move diamonds while other calls are checked.
        return st.one_of(st.sampled_from(["sandbox:hold-fuzz", "sandbox:fail-fuzz"]), junk)
    if name == "country_code":
        return st.one_of(st.sampled_from(["US", "GB", "us", "USA", "U\u0301S"]), junk)
    if name == "page_token":
        return st.one_of(refs("page_token"), refs("page_token"), junk)
    if name in {"title", "name", "reason", "reference", "description"}:
        return st.one_of(display_text(), junk)
    return junk


def refs(kind: str) -> st.SearchStrategy[Ref]:
    return st.integers(0, 1_000).map(lambda index: Ref(kind, index))


def int_strategy(name: str, bounds: tuple[int, int]) -> st.SearchStrategy[int]:
    low, high = bounds
    hints = [value for value in INT_HINTS.get(name, []) if low <= value <= high]
    edges = [value for value in INT64_EDGES if low <= value <= high]
    parts = [st.sampled_from(edges), st.integers(-2, 2_100), st.integers(low, high)]
    if hints:
        parts.insert(0, st.sampled_from(hints))
    return st.one_of(parts)


SIGNED_64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64}
SIGNED_32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
UNSIGNED = {
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
}


def value_strategy(fd: FieldDescriptor, *, small: bool, depth: int) -> st.SearchStrategy[Any]:
    kind = fd.type
    if kind == FieldDescriptor.TYPE_STRING:
        return string_strategy(fd.name, small=small)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64 if small else 4_096)
    if kind in SIGNED_64:
        return int_strategy(fd.name, INT64)
    if kind in SIGNED_32:
        return int_strategy(fd.name, INT32)
    if kind in UNSIGNED:
        return int_strategy(fd.name, UNSIGNED[kind])
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=64 if kind == FieldDescriptor.TYPE_DOUBLE else 32)
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [value.number for value in fd.enum_type.values]
        return st.one_of(st.sampled_from(known), st.sampled_from(ENUM_EXTRA_NUMBERS))
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return plan_strategy(fd.message_type, small=small, depth=depth + 1)
    raise AssertionError(f"no fuzz strategy for field {fd.full_name} of type {kind}")


def field_strategy(fd: FieldDescriptor, *, small: bool, depth: int) -> st.SearchStrategy[Any]:
    if not fd.is_repeated:
        return value_strategy(fd, small=small, depth=depth)
    element = value_strategy(fd, small=True, depth=depth)
    # Past the documented 1,000: the same element over and over (fresh request_ids stay distinct), or distinct ids.
    huge = [st.builds(lambda item, n: [item] * n, element, st.sampled_from([1_000, 1_001]))]
    if fd.type == FieldDescriptor.TYPE_STRING:
        huge.append(st.sampled_from([1_000, 1_001]).map(lambda n: [f"fz-{RUN}-nobody-{i}" for i in range(n)]))
    return st.one_of(st.just([]), st.lists(element, min_size=1, max_size=4), *huge)


def plan_strategy(descriptor: Descriptor, *, small: bool = False, depth: int = 0) -> st.SearchStrategy[dict]:
    """A request as a plan: {field name: value}, placeholders (Ref, FRESH) resolved when the call is made. Every
    field may be absent; of a oneof at most one member is set."""
    if depth > 3:
        return st.just({})
    optional: dict[str, st.SearchStrategy[Any]] = {}
    oneofs: dict[str, list[FieldDescriptor]] = {}
    for fd in descriptor.fields:
        if fd.containing_oneof is not None:
            oneofs.setdefault(fd.containing_oneof.name, []).append(fd)
        else:
            optional[fd.name] = field_strategy(fd, small=small, depth=depth)
    for name, members in oneofs.items():
        optional[f"oneof:{name}"] = st.one_of(
            [st.tuples(st.just(m.name), field_strategy(m, small=small, depth=depth)) for m in members]
        )
    return st.fixed_dictionaries({}, optional=optional)


# Plausible values: a request made only of them is often valid, so that calls get past validation into the use cases
# (and move money); one bad field among them probes each check alone.
NOW = int(time.time())
GOOD_INTS: dict[str, st.SearchStrategy[int]] = {
    "quantity": st.integers(1, 5),
    "coins": st.integers(1, 50),
    "diamonds": st.integers(2_000, 2_100),
    "page_size": st.integers(0, 100),
    "coins_per_winner": st.integers(1, 10),
    "daily_coins": st.integers(1_000_000, 10**10),  # a limit the other calls rarely reach
    "bonus_percent": st.integers(1, 100),
    "bonus_coins": st.integers(1, 1_000),
    "min_package_coins": st.integers(0, 20_000),
    "max_uses_per_account": st.integers(0, 10),
    "coin_price": st.integers(1, 1_000),
    "seconds": st.integers(NOW - 30 * 86_400, NOW + 30 * 86_400),
    "nanos": st.integers(0, 999_999_999),
}
GOOD_STRINGS: dict[str, st.SearchStrategy[Any]] = {
    "request_id": st.just(FRESH),
    "gift_id": st.one_of(st.sampled_from(["rose", "finger_heart", "doughnut"]), refs("gift")),
    "package_id": st.sampled_from(PACKAGE_IDS),
    "payment_token": st.sampled_from(["tok_ok_fuzz", "tok_ok_fuzz", "tok_declined_fuzz"]),
    "payout_destination": st.sampled_from(["sandbox:hold-fuzz", "sandbox:fail-fuzz"]),
    "country_code": st.sampled_from(["US", "GB", "JP"]),
    "page_token": st.one_of(st.just(""), refs("page_token")),
    "stream_id": st.one_of(refs("live_stream"), refs("live_stream"), refs("stream")),
    # A gift goes to a stream or a video: with a stream_id, most plausible gifts leave the video out.
    "video_id": st.one_of(st.just(""), st.just(""), refs("video")),
    # Accounts with coins pay, creators with diamonds withdraw: half of the time, the rest any account.
    "account_id": st.one_of(refs("user"), refs("account")),
    "sender_id": st.one_of(refs("user"), refs("account")),
    "creator_id": st.one_of(refs("creator"), refs("account")),
}
ABSENT = object()  # an optional message field left unset


def good_value(fd: FieldDescriptor, *, depth: int = 0) -> st.SearchStrategy[Any]:
    if fd.is_repeated:
        return st.lists(good_value_single(fd, depth=depth), min_size=1, max_size=3)
    if fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.full_name.startswith("google.protobuf."):
        return st.one_of(st.just(ABSENT), good_value_single(fd, depth=depth))  # timestamps: optional
    return good_value_single(fd, depth=depth)


def good_value_single(fd: FieldDescriptor, *, depth: int) -> st.SearchStrategy[Any]:
    if fd.type == FieldDescriptor.TYPE_STRING:
        if fd.name in GOOD_STRINGS:
            return GOOD_STRINGS[fd.name]
        if fd.name in ACCOUNT_FIELDS:
            return refs("account")
        if fd.name in REF_FIELDS:
            return refs(REF_FIELDS[fd.name])
        if fd.name in {"title", "name", "reason", "reference", "description"}:
            return display_text()
        return identifiers()
    if fd.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([value.number for value in fd.enum_type.values])
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return good_plan(fd.message_type, depth=depth + 1)
    if fd.type in SIGNED_64 | SIGNED_32 or fd.type in UNSIGNED:
        return GOOD_INTS.get(fd.name, st.integers(1, 10))
    return value_strategy(fd, small=True, depth=depth)  # bool, bytes, floats: anything goes


def top_level_fields(descriptor: Descriptor) -> dict[str, list[FieldDescriptor]]:
    """Plan keys: a field's name, or "oneof:<name>" for the members of a oneof."""
    keys: dict[str, list[FieldDescriptor]] = {}
    for fd in descriptor.fields:
        key = f"oneof:{fd.containing_oneof.name}" if fd.containing_oneof is not None else fd.name
        keys.setdefault(key, []).append(fd)
    return keys


def good_plan(descriptor: Descriptor, *, depth: int = 0) -> st.SearchStrategy[dict]:
    fields = {}
    for key, members in top_level_fields(descriptor).items():
        if key.startswith("oneof:"):
            fields[key] = st.one_of([st.tuples(st.just(m.name), good_value(m, depth=depth)) for m in members])
        else:
            fields[key] = good_value(members[0], depth=depth)
    return st.fixed_dictionaries(fields)


@st.composite
def request_plans(draw: st.DrawFn, descriptor: Descriptor) -> dict:
    """Plausible requests, plausible requests with one field from anything, and requests of anything."""
    mode = draw(st.sampled_from(["plausible", "plausible", "one_field_bad", "one_field_bad", "anything"]))
    if mode == "anything":
        return draw(plan_strategy(descriptor))
    plan = draw(good_plan(descriptor))
    keys = sorted(top_level_fields(descriptor))
    if mode == "one_field_bad" and keys:
        key = draw(st.sampled_from(keys))
        bad = plan_strategy(descriptor).map(lambda anything: anything.get(key, ABSENT))
        plan[key] = draw(bad)
    return plan


BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"ok\x80", b"\xe2\x82"]


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def wire_requests(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Bytes no protobuf library would send: a string field that is not UTF-8 (an encoded surrogate, an overlong
    form, past U+10FFFF, cut short), a length past the end, a huge length, unbalanced groups, random bytes."""
    numbers = st.sampled_from([fd.number for fd in descriptor.fields] or [1])
    strings = [fd.number for fd in descriptor.fields if fd.type == FieldDescriptor.TYPE_STRING]
    parts = [
        st.binary(max_size=64),
        st.builds(lambda n: varint(n << 3 | 2) + varint(50) + b"short", numbers),
        st.builds(lambda n: varint(n << 3 | 2) + b"\xff" * 10, numbers),
        st.builds(lambda n, group: varint(n << 3 | group), numbers, st.sampled_from([3, 4])),
        st.builds(lambda n: varint(n << 3 | 0) + b"\xff" * 11, numbers),  # a varint longer than 10 bytes
    ]
    if strings:
        parts.append(
            st.builds(
                lambda n, raw: varint(n << 3 | 2) + varint(len(raw)) + raw,
                st.sampled_from(strings),
                st.sampled_from(BAD_UTF8),
            )
        )
    return st.one_of(parts)


# Mostly callers who may make the call, so that calls get past authorization as often as past validation.
PRINCIPALS = ("owner", "owner", "owner", "service", "service", "service", "admin", "admin", "other_user", "anonymous")


# ---------------------------------------------------------------------------------------------------- the world


@dataclass
class World:
    """What the fuzzer calls with: accounts, streams, withdrawals… made in setup and by successful calls."""

    users: list[str]  # adult-verified accounts with coins
    creators: list[str]  # adult-verified, KYC, diamonds
    unverified: str
    frozen: str
    gift_id: str
    pools: dict[str, list[str]] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)  # stream, purchase or withdrawal id -> its account
    destinations: dict[str, str] = field(default_factory=dict)  # creator -> payout destination

    @property
    def money_accounts(self) -> list[str]:
        return [*self.users, *self.creators, self.unverified, self.frozen]

    def add(self, kind: str, value: str, owner: str | None = None) -> None:
        if value not in self.pools.setdefault(kind, []):
            self.pools[kind].append(value)
        if owner is not None:
            self.owners[value] = owner

    def remove(self, kind: str, value: str) -> None:
        if value in self.pools.get(kind, []):
            self.pools[kind].remove(value)

    def pick(self, ref: Ref) -> str:
        pool = self.pools.get(ref.kind) or [""]
        return pool[ref.index % len(pool)]


class Caller:
    """Synchronous gRPC calls to the stack by method path (no stubs needed: the descriptors say everything)."""

    def __init__(self, stack: Stack) -> None:
        self._channels = {name: grpc.insecure_channel(stack.address(name)) for name in SERVICE_ADDRESS.values()}

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def _channel(self, rpc: Rpc) -> grpc.Channel:
        return self._channels[SERVICE_ADDRESS[rpc.service.rsplit(".", 1)[1]]]

    def unary(self, rpc: Rpc) -> grpc.UnaryUnaryMultiCallable:
        return self._channel(rpc).unary_unary(
            rpc.path,
            request_serializer=serialize,
            response_deserializer=rpc.response_class().FromString,
        )

    def stream(self, rpc: Rpc) -> grpc.UnaryStreamMultiCallable:
        return self._channel(rpc).unary_stream(
            rpc.path,
            request_serializer=serialize,
            response_deserializer=rpc.response_class().FromString,
        )

    def call(self, name: str, request: Message, metadata: Metadata) -> Any:
        """A setup or check call that must succeed."""
        return self.unary(self._rpc(name, request))(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)

    def future(self, name: str, request: Message, metadata: Metadata) -> Future:
        return self.unary(self._rpc(name, request)).future(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)

    @staticmethod
    def _rpc(name: str, request: Message) -> Rpc:
        input_type = request.DESCRIPTOR.full_name
        return next(rpc for rpc in RPCS if rpc.name == name and rpc.method.input_type.full_name == input_type)


def serialize(request: Message | bytes) -> bytes:
    """Messages, or raw bytes as they are (what a client outside protobuf may send)."""
    return request if isinstance(request, bytes) else request.SerializeToString()


Metadata = tuple[tuple[str, str], ...]
_TOKENS: dict[tuple[str, str], Metadata] = {}


def bearer(subject: str, role: str) -> Metadata:
    key = (subject, role)
    if key not in _TOKENS:
        _TOKENS[key] = (("authorization", f"Bearer {mint_token(AUTH_SECRET, subject, [role])}"),)
    return _TOKENS[key]


SERVICE = bearer("fuzz-backend", "service")
ADMIN = bearer("fuzz-admin", "admin")


def rid(prefix: str = "fz") -> str:
    return f"{prefix}-{RUN}-{uuid.uuid4().hex[:12]}"


def wait_until(probe: Callable[[], Any], done: Callable[[Any], bool], what: str) -> Any:
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        result = probe()
        if done(result):
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {result}"
        time.sleep(0.05)


def earnings(caller: Caller, creator_id: str) -> payouts_pb2.Earnings:
    request = payouts_pb2.GetEarningsRequest(creator_id=creator_id)
    return caller.call("GetEarnings", request, SERVICE).earnings


def build_world(caller: Caller) -> World:
    w, g, p = wallet_pb2, gifts_pb2, payouts_pb2

    def account(prefix: str, *, adult: bool = True) -> str:
        account_id = f"fz{prefix}-{RUN}"
        request = w.UpsertAccountRequest(
            request_id=rid(), account_id=account_id, adult_verified=adult, country_code="US"
        )
        caller.call("UpsertAccount", request, SERVICE)
        return account_id

    def buy(account_id: str, package_id: str, *, reversible: bool = True) -> str:
        request = w.PurchaseCoinsRequest(
            request_id=rid(), account_id=account_id, package_id=package_id, payment_token="tok_ok_fuzz"
        )
        purchase_id = caller.call("PurchaseCoins", request, SERVICE).purchase.purchase_id
        if reversible:
            world.add("purchase", purchase_id, account_id)
        return purchase_id

    def go_live(creator_id: str, title: str) -> str:
        request = g.StartLiveStreamRequest(request_id=rid(), creator_id=creator_id, title=title)
        stream_id = caller.call("StartLiveStream", request, SERVICE).stream.stream_id
        world.add("stream", stream_id, creator_id)
        world.add("live_stream", stream_id, creator_id)
        return stream_id

    def send(sender_id: str, stream_id: str, gift_id: str, quantity: int) -> int:
        request = g.SendGiftRequest(
            request_id=rid(), sender_id=sender_id, stream_id=stream_id, gift_id=gift_id, quantity=quantity
        )
        return caller.call("SendGift", request, SERVICE).gift.coins

    def withdraw(creator_id: str, diamonds: int) -> str:
        request = p.RequestWithdrawalRequest(request_id=rid(), creator_id=creator_id, diamonds=diamonds)
        withdrawal_id = caller.call("RequestWithdrawal", request, SERVICE).withdrawal.withdrawal_id
        world.add("withdrawal", withdrawal_id, creator_id)
        return withdrawal_id

    rates = caller.call("GetRates", p.GetRatesRequest(), SERVICE).rates
    assert (rates.diamonds_per_coin_numerator, rates.diamonds_per_coin_denominator) == (1, 1)
    world = World(
        users=[account("user1"), account("user2")],
        creators=[account("creator1"), account("creator2")],
        unverified=account("minor", adult=False),
        frozen=account("frozen"),
        gift_id=f"fzgift-{RUN}",
    )
    for account_id in world.money_accounts:
        world.add("account", account_id)
    for kind in ("user", "creator"):
        for account_id in getattr(world, f"{kind}s"):
            world.add(kind, account_id)
    world.add("gift", world.gift_id)
    caller.call(
        "UpsertGift",
        g.UpsertGiftRequest(request_id=rid(), gift=g.Gift(gift_id=world.gift_id, name="Fuzz 🎁", coin_price=3)),
        ADMIN,
    )
    # The payers' coins (not for the fuzzer to reverse: a chargeback of spent coins would freeze them).
    buy(world.users[0], "coins_16500", reversible=False)
    buy(world.users[1], "coins_3303", reversible=False)
    buy(world.users[1], "coins_65")
    # The frozen account: coins bought, some spent, the purchase charged back (debt), so it is frozen.
    frozen_purchase = buy(world.frozen, "coins_330")
    caller.call("SpendCoins", w.SpendCoinsRequest(request_id=rid(), account_id=world.frozen, coins=200), SERVICE)
    reversal = w.ReversePurchaseRequest(request_id=rid(), purchase_id=frozen_purchase, reason="chargeback")
    assert caller.call("ReversePurchase", reversal, ADMIN).account_status == w.ACCOUNT_STATUS_FROZEN

    # Each creator: an ended stream and a live one, both with gifts, so statements have two rows (a page token).
    expected: dict[str, int] = {}
    for creator, sender, destination, disco_balls in zip(
        world.creators, world.users, ("sandbox:hold-fuzz", "sandbox:fail-fuzz"), (6, 3), strict=True
    ):
        profile = p.UpdateCreatorProfileRequest(
            request_id=rid(), creator_id=creator, kyc_verified=True, payout_destination=destination
        )
        caller.call("UpdateCreatorProfile", profile, SERVICE)
        world.destinations[creator] = destination
        ended = go_live(creator, "Warm-up 🎉")
        coins = send(sender, ended, "disco_ball", disco_balls)
        caller.call("EndLiveStream", g.EndLiveStreamRequest(request_id=rid(), stream_id=ended), SERVICE)
        world.remove("live_stream", ended)
        coins += send(sender, go_live(creator, "Live 👨\u200d👩\u200d👧"), "rose", 5)
        expected[creator] = coins
    for creator, coins in expected.items():
        wait_until(lambda c=creator: earnings(caller, c), lambda e, n=coins: e.lifetime_diamonds == n, "settlement")

    # Withdrawals: one held pending, one canceled, one failed (diamonds returned).
    withdraw(world.creators[0], 2_000)
    canceled = withdraw(world.creators[0], 2_000)
    caller.call("CancelWithdrawal", p.CancelWithdrawalRequest(request_id=rid(), withdrawal_id=canceled), SERVICE)
    failed = withdraw(world.creators[1], 2_000)
    wait_until(
        lambda: caller.call("GetWithdrawal", p.GetWithdrawalRequest(withdrawal_id=failed), SERVICE).withdrawal,
        lambda found: found.status == p.WITHDRAWAL_STATUS_FAILED,
        "a failed payout",
    )

    # A promotion of our own, far in the future (so it never applies), for EndPromotion.
    promotion = w.CreatePromotionRequest(request_id=rid(), name="Fuzz promotion", bonus_coins=1)
    promotion.starts_at.FromSeconds(253_402_200_000)
    world.add("promotion", caller.call("CreatePromotion", promotion, ADMIN).promotion.promotion_id)

    for token in page_tokens(caller, world):
        world.add("page_token", token)
    return world


def page_tokens(caller: Caller, world: World) -> list[str]:
    """Real tokens (of this and other lists and accounts) and forged ones."""
    w, p = wallet_pb2, payouts_pb2
    creator = world.creators[0]
    real = [
        caller.call("ListTransactions", w.ListTransactionsRequest(account_id=world.users[0], page_size=1), SERVICE),
        caller.call("ListTransactions", w.ListTransactionsRequest(account_id=world.users[1], page_size=1), SERVICE),
        caller.call("ListPromotions", w.ListPromotionsRequest(page_size=1), ADMIN),
        caller.call("ListWithdrawals", p.ListWithdrawalsRequest(creator_id=creator, page_size=1), SERVICE),
        caller.call(
            "ListEarnings",
            p.ListEarningsRequest(creator_id=creator, group_by=p.EARNINGS_GROUP_BY_STREAM, page_size=1),
            SERVICE,
        ),
    ]
    tokens = [reply.next_page_token for reply in real]
    assert all(tokens), tokens

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode()

    def forged(kind: str, position: object, creator_id: str = creator) -> str:
        return b64(json.dumps({"k": kind, "c": creator_id, "p": position}).encode())

    tampered = []
    for token in tokens:
        middle = len(token) // 2
        flipped = token[:middle] + ("A" if token[middle] != "A" else "B") + token[middle + 1 :]
        tampered += [token[:-2], token + "=", token[1:], flipped]
        tampered += [token * 40, token.replace("=", "%3D")]
    crafted = [b64(raw) for raw in (b"p:0", b"p:-1", b"p:" + b"9" * 30, b"p:\xff", b"m:1", b"m:0", b"x", b"", b"\x00")]
    crafted += [b64(bytes(range(256))), b64(random.Random(7).randbytes(48)), "A" * 5_000, "====", "not base64!", "🎉"]
    for kind in ("withdrawals", "earnings_by_stream"):
        for position in (
            [0, "x"],
            [-(2**63), "x"],
            [2**63 - 1, "x"],
            [2**62, "x"],
            [2**64, "x"],
            [1.5, "x"],
            [True, "x"],
            ["1", "x"],
            [1, "\u0000"],
            [1, "x" * 300],
            [1, "\ud800"],
            [],
            None,
            {"a": 1},
        ):
            crafted.append(forged(kind, position))
        crafted.append(forged(kind, [1, "x"], world.creators[1]))  # another creator's
    for day in ("0001-01-01", "9999-12-31", "2024-02-30", "\u0000", "x" * 300, 20240101):
        crafted.append(forged("earnings_by_day", [day]))
    return tokens + tampered + crafted


# ---------------------------------------------------------------------------------------------------- calls


@dataclass
class Fuzzer:
    caller: Caller
    world: World
    codes: Counter = field(default_factory=Counter)
    _strategies: dict[str, st.SearchStrategy[dict]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return "fuzzer"

    def strategy(self, rpc: Rpc) -> st.SearchStrategy[dict]:
        if rpc.path not in self._strategies:
            self._strategies[rpc.path] = request_plans(rpc.method.input_type)
        return self._strategies[rpc.path]

    # --- plans to requests

    def resolve(self, value: Any) -> Any:
        if isinstance(value, Ref):
            return self.world.pick(value)
        if isinstance(value, Fresh):
            return rid()
        return value

    def fill(self, message: Message, plan: dict) -> Message:
        for key, value in plan.items():
            if value is ABSENT:
                continue
            name, value = value if key.startswith("oneof:") else (key, value)
            fd = message.DESCRIPTOR.fields_by_name[name]
            if fd.is_repeated:
                container = getattr(message, name)
                for item in value:
                    if fd.type == FieldDescriptor.TYPE_MESSAGE:
                        self.fill(container.add(), item)
                    else:
                        container.append(self.resolve(item))
            elif fd.type == FieldDescriptor.TYPE_MESSAGE:
                self.fill(getattr(message, name), value)
                getattr(message, name).SetInParent()
            else:
                setattr(message, name, self.resolve(value))
        return message

    def guard(self, rpc: Rpc, request: Message) -> None:
        """Keeps the fuzzer off what the rest of the suite shares: the seeded catalog and the default promotion."""
        if rpc.name == "UpsertGift" and request.gift.gift_id in SEEDED_GIFT_IDS:
            request.gift.gift_id = self.world.gift_id
        if rpc.name == "RetireGift" and request.gift_id in SEEDED_GIFT_IDS:
            request.gift_id = self.world.gift_id
        if rpc.name == "EndPromotion" and request.promotion_id in PROTECTED_PROMOTION_IDS:
            request.promotion_id = self.world.pick(Ref("promotion", 0))

    def owner(self, request: Message) -> str:
        for name in ("account_id", "sender_id", "creator_id"):
            value = getattr(request, name, "")
            if value:
                return value
        for name in ("stream_id", "withdrawal_id", "purchase_id"):
            value = getattr(request, name, "")
            if value in self.world.owners:
                return self.world.owners[value]
        spends = getattr(request, "spends", None)
        if spends:
            return spends[0].account_id
        return self.world.users[0]

    def metadata(self, principal: str, request: Message) -> Metadata:
        owner = self.owner(request)
        if principal == "owner":
            # A token's subject comes from an identity provider: bounded, whatever the request says.
            return bearer(owner if 0 < len(owner) <= 256 else self.world.users[0], "user")
        if principal == "other_user":
            return bearer(next(a for a in self.world.money_accounts if a != owner), "user")
        if principal == "service":
            return SERVICE
        if principal == "admin":
            return ADMIN
        return ()

    # --- money

    def money(self) -> dict[str, tuple[int, ...]]:
        """Coins (paid, bonus) and diamonds (available, reserved, pending, lifetime) of every fuzz account."""
        balances = {
            account: self.caller.future("GetBalance", wallet_pb2.GetBalanceRequest(account_id=account), SERVICE)
            for account in self.world.money_accounts
        }
        diamonds = {
            account: self.caller.future("GetEarnings", payouts_pb2.GetEarningsRequest(creator_id=account), SERVICE)
            for account in self.world.money_accounts
        }
        snapshot = {}
        for account in self.world.money_accounts:
            balance = balances[account].result().balance
            earned = diamonds[account].result().earnings
            snapshot[account] = (
                balance.paid_coins,
                balance.bonus_coins,
                earned.available_diamonds,
                earned.reserved_diamonds,
                earned.pending_diamonds,
                earned.lifetime_diamonds,
            )
        return snapshot

    # --- one call

    def run(self, rpc: Rpc, plan: dict, principal: str) -> None:
        """One example: the plan made a request, called as the principal, and checked."""
        request = self.fill(rpc.request_class()(), plan)
        self.guard(rpc, request)
        metadata = self.metadata(principal, request)
        note(f"{rpc.path} as {principal}: {shorten(request)}")
        self.call_and_check(rpc, request, metadata, note)

    def call_and_check(
        self, rpc: Rpc, request: Message | bytes, metadata: Metadata, report: Callable[[str], None] = print
    ) -> tuple[grpc.StatusCode, Any]:
        recipient_before = self.recipient_lifetime(rpc, request)
        before = self.money() if rpc.effect == MONEY else None
        started = time.monotonic()
        if rpc.method.server_streaming:
            code, error, response = self.call_stream(rpc, request, metadata)
        else:
            code, error, response = self.call_unary(rpc, request, metadata)
        elapsed = time.monotonic() - started
        self.codes[(rpc.name, code.name, error_reason(error) or "" if error is not None else "")] += 1
        report(f"-> {code.name} after {elapsed:.2f} s: {error.details() if error else shorten(response)}")

        assert code not in NEVER, f"{rpc.path} ended {code.name}: {error.details() if error else ''}"
        if error is not None:
            reason = error_reason(error)
            assert reason, f"{rpc.path} failed {code.name} without an ErrorInfo: {error.details()}"
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                assert reason == "INVALID_ARGUMENT"
                assert violated_fields(error), f"{rpc.path}: INVALID_ARGUMENT without field violations"
        if code == grpc.StatusCode.OK and isinstance(request, Message):
            self.after_success(rpc, request, response, recipient_before)
        elif before is not None and code in REFUSALS:
            after = self.money()
            moved = {a: (before[a], after[a]) for a in before if before[a] != after[a]}
            assert not moved, f"{rpc.path} failed {code.name} yet money moved: {moved}"
        return code, error

    def call_unary(self, rpc: Rpc, request: Message | bytes, metadata: Metadata) -> tuple[grpc.StatusCode, Any, Any]:
        try:
            response = self.caller.unary(rpc)(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            return error.code(), error, None
        return grpc.StatusCode.OK, None, response

    def call_stream(self, rpc: Rpc, request: Message | bytes, metadata: Metadata) -> tuple[grpc.StatusCode, Any, Any]:
        """A server stream (a live feed) runs until its subject ends: it is accepted when its headers arrive and it
        is still open a moment later; then it is canceled."""
        call = self.caller.stream(rpc)(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
        call.initial_metadata()  # returns on the headers, or when the call ends (an error ends it at once)
        deadline = time.monotonic() + 0.2
        while not call.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not call.done():
            call.cancel()
            return grpc.StatusCode.OK, None, "(stream accepted, canceled)"
        code = call.code()
        return code, (call if code != grpc.StatusCode.OK else None), "(stream ended)"

    def recipient_lifetime(self, rpc: Rpc, request: Message | bytes) -> int | None:
        """Before a gift to a stream or video we know: its creator's diamonds, to wait for the settlement of a
        success."""
        if rpc.name != "SendGift" or not isinstance(request, Message):
            return None
        target = request.stream_id or request.video_id
        if target not in self.world.owners:
            return None
        return earnings(self.caller, self.world.owners[target]).lifetime_diamonds

    def after_success(self, rpc: Rpc, request: Message, response: Any, recipient_before: int | None) -> None:
        """Remembers what a call made (for later calls), undoes what would leak into other tests, and waits for the
        asynchronous effects (settlement, payouts) so that they do not look like money moved by a later refusal."""
        world, name = self.world, rpc.name
        if name == "StartLiveStream":
            world.add("stream", response.stream.stream_id, response.stream.creator_id)
            world.add("live_stream", response.stream.stream_id, response.stream.creator_id)
        elif name == "EndLiveStream":
            world.remove("live_stream", response.stream.stream_id)
            # The creator goes live again, so that gifts and feeds keep live streams to go to.
            restart = gifts_pb2.StartLiveStreamRequest(
                request_id=rid(), creator_id=response.stream.creator_id, title="Back again 🎉"
            )
            with contextlib.suppress(grpc.RpcError):  # e.g. the fuzzer had started another stream meanwhile
                stream = self.caller.call("StartLiveStream", restart, SERVICE).stream
                world.add("stream", stream.stream_id, stream.creator_id)
                world.add("live_stream", stream.stream_id, stream.creator_id)
        elif name == "UpsertVideo":
            world.add("video", response.video.video_id, response.video.creator_id)
        elif name == "StartMatch":
            world.add("match", response.match.match_id)
        elif name == "PurchaseCoins":
            world.add("purchase", response.purchase.purchase_id, request.account_id)
        elif name == "CreatePromotion":
            world.add("promotion", response.promotion.promotion_id)
            if response.promotion.status == wallet_pb2.PROMOTION_STATUS_ACTIVE:  # it must not apply to others' buys
                end = wallet_pb2.EndPromotionRequest(request_id=rid(), promotion_id=response.promotion.promotion_id)
                self.caller.call("EndPromotion", end, ADMIN)
        elif name == "UpsertGift" and response.gift.gift_id != world.gift_id:
            retire = gifts_pb2.RetireGiftRequest(request_id=rid(), gift_id=response.gift.gift_id)
            self.caller.call("RetireGift", retire, ADMIN)
        elif name == "UpsertAccount" and request.account_id in world.money_accounts:
            # Back as set up (an account the fuzzer made a minor could never pay again). The frozen one stays frozen.
            adult = request.account_id != world.unverified
            restore = wallet_pb2.UpsertAccountRequest(
                request_id=rid(), account_id=request.account_id, adult_verified=adult, country_code="US"
            )
            self.caller.call("UpsertAccount", restore, SERVICE)
        elif name == "UpdateCreatorProfile" and request.creator_id not in world.creators:
            world.destinations[request.creator_id] = response.profile.payout_destination
        elif name == "UpdateCreatorProfile":
            restore = payouts_pb2.UpdateCreatorProfileRequest(
                request_id=rid(),
                creator_id=request.creator_id,
                kyc_verified=True,
                payout_destination=world.destinations[request.creator_id],
            )
            self.caller.call("UpdateCreatorProfile", restore, SERVICE)
        elif name == "SendGift" and recipient_before is not None and response.gift.coins:
            creator = response.gift.recipient_id
            wait_until(
                lambda: earnings(self.caller, creator),
                lambda found: found.lifetime_diamonds >= recipient_before + response.gift.coins,
                f"settlement of {response.gift.gift_transaction_id}",
            )
        elif name == "RequestWithdrawal":
            withdrawal = response.withdrawal
            world.add("withdrawal", withdrawal.withdrawal_id, withdrawal.creator_id)
            if not world.destinations.get(withdrawal.creator_id, "").startswith("sandbox:hold"):
                wait_until(
                    lambda: (
                        self.caller.call(
                            "GetWithdrawal",
                            payouts_pb2.GetWithdrawalRequest(withdrawal_id=withdrawal.withdrawal_id),
                            SERVICE,
                        ).withdrawal
                    ),
                    lambda found: found.status != payouts_pb2.WITHDRAWAL_STATUS_PENDING,
                    f"the payout of {withdrawal.withdrawal_id}",
                )


def shorten(value: object, limit: int = 600) -> str:
    text = repr(value) if not isinstance(value, Message) else str(value).replace("\n", " ")
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


@pytest.fixture(scope="module")
def fuzzer(stack: Stack) -> Iterator[Fuzzer]:
    caller = Caller(stack)
    try:
        fuzz = Fuzzer(caller, build_world(caller))
        yield fuzz
        if os.environ.get("COINSTREAM_FUZZ_STATS"):
            print({kind: len(pool) for kind, pool in fuzz.world.pools.items()})
            for (name, code, reason), count in sorted(fuzz.codes.items()):
                print(f"{name:24} {code:20} {reason:28} {count}")
    finally:
        caller.close()


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=SEED is None,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def seeded(test: Callable) -> Callable:
    return seed(int(SEED))(test) if SEED is not None else test


@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: f"{rpc.service.split('.')[1]}.{rpc.name}")
@seeded
@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_rpc(fuzzer: Fuzzer, rpc: Rpc, data: st.DataObject) -> None:
    plan = data.draw(fuzzer.strategy(rpc), label="request")
    principal = data.draw(st.sampled_from(PRINCIPALS), label="principal")
    fuzzer.run(rpc, plan, principal)


@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: f"{rpc.service.split('.')[1]}.{rpc.name}")
@seeded
@settings(FUZZ_SETTINGS, max_examples=max(1, EXAMPLES // 5))
@given(data=st.data())
def test_fuzz_rpc_wire(fuzzer: Fuzzer, rpc: Rpc, data: st.DataObject) -> None:
    """Requests as raw bytes that do not parse as the request type: INVALID_ARGUMENT, never UNKNOWN or INTERNAL."""
    raw = data.draw(wire_requests(rpc.method.input_type), label="raw request")
    metadata = data.draw(st.sampled_from([SERVICE, ADMIN, ()]), label="metadata")
    note(f"{rpc.path} with {raw!r}")
    fuzzer.call_and_check(rpc, raw, metadata, note)


# Display text (titles, gift and promotion names, reasons, references): what it must refuse and what it must keep.
REFUSED_TEXT = {
    "C0 escape": "red \x1b[31m",
    "NUL": "a\x00b",
    "C1 NEXT LINE": "a\x85b",
    "C1 CSI": "a\x9b31mb",
    "right-to-left override": "abc\u202egnp.exe",
    "left-to-right embedding": "a\u202ab\u202c",
    "isolates": "a\u2066b\u2069",
    "right-to-left mark": "a\u200fb",
    "Arabic letter mark": "a\u061cb",
    "zero-width space": "top\u200bfan",
    "zero-width non-joiner": "a\u200cb",
    "joiner between letters": "a\u200db",
    "joiner at the end": "🎉\u200d",
    "word joiner": "a\u2060b",
    "BOM": "\ufeffhello",
    "soft hyphen": "fr\u00adee coins",
    "combining grapheme joiner": "a\u034fb",
    "Mongolian vowel separator": "a\u180eb",
    "deprecated format control": "a\u206ab",
    "interlinear annotation": "a\ufff9b\ufffac\ufffb",
}
KEPT_TEXT = {
    "emoji": "Friday 🎉",
    "skin tone": "👍🏽 thanks",
    "flag": "🇯🇵 live",
    "subdivision flag (tags)": "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
    "keycap": "1\ufe0f\u20e3 first",
    "family (joiners)": "👨\u200d👩\u200d👧 family",
    "fire heart (joiner after a variation selector)": "❤\ufe0f\u200d🔥",
    "rainbow flag": "🏳\ufe0f\u200d🌈",
    "technologist with skin tone": "🧑🏽\u200d💻 coding",
    "scripts": "日本語, عربي, Ünïcödé",
}


def display_text_calls(fuzzer: Fuzzer) -> dict[str, Callable[[str], tuple[Rpc, Message, Metadata]]]:
    """Per display-text field: a valid request carrying the text (fresh ids each time), and who may make it. Accounts
    of their own: the fuzzing may have left the world's drained or frozen."""
    w, g, call = wallet_pb2, gifts_pb2, fuzzer.caller.call
    creator, payer = f"fztitle-{RUN}", f"fzpayer-{RUN}"
    for account_id in (creator, payer):
        upsert = w.UpsertAccountRequest(request_id=rid(), account_id=account_id, adult_verified=True, country_code="US")
        call("UpsertAccount", upsert, SERVICE)
    purchase = w.PurchaseCoinsRequest(account_id=payer, package_id="coins_660", payment_token="tok_ok_fuzz")

    def purchase_id() -> str:
        purchase.request_id = rid()
        return call("PurchaseCoins", purchase, SERVICE).purchase.purchase_id

    def promotion(text: str) -> w.CreatePromotionRequest:
        request = w.CreatePromotionRequest(request_id=rid(), name=text, bonus_coins=1)
        request.starts_at.FromSeconds(253_402_200_000)  # never applies (and is ended once made)
        return request

    def rpc(name: str) -> Rpc:
        return next(rpc for rpc in RPCS if rpc.name == name)

    purchase_id()  # coins for the spends
    return {
        "StartLiveStream.title": lambda text: (
            rpc("StartLiveStream"),
            g.StartLiveStreamRequest(request_id=rid(), creator_id=creator, title=text),
            SERVICE,
        ),
        "UpsertGift.gift.name": lambda text: (
            rpc("UpsertGift"),
            g.UpsertGiftRequest(request_id=rid(), gift=g.Gift(gift_id=rid("fzname"), name=text, coin_price=2)),
            ADMIN,
        ),
        "CreatePromotion.name": lambda text: (rpc("CreatePromotion"), promotion(text), ADMIN),
        "ReversePurchase.reason": lambda text: (
            rpc("ReversePurchase"),
            w.ReversePurchaseRequest(request_id=rid(), purchase_id=purchase_id(), reason=text),
            ADMIN,
        ),
        "SpendCoins.reference": lambda text: (
            rpc("SpendCoins"),
            w.SpendCoinsRequest(request_id=rid(), account_id=payer, coins=1, reference=text),
            SERVICE,
        ),
    }


def test_display_text_refuses_controls_bidi_and_invisible_characters_but_keeps_emoji(fuzzer: Fuzzer) -> None:
    """End to end, on every display-text field: C0/C1 controls, bidi overrides, embeddings, isolates and marks, and
    zero-width or otherwise invisible characters are INVALID_ARGUMENT on that field; emoji, ZWJ sequences included,
    are accepted (tests/unit/test_runtime.py has such cases against the Validator alone)."""
    failures = []
    for path, make in display_text_calls(fuzzer).items():
        violation = path.split(".", 1)[1]
        for label, text in [*REFUSED_TEXT.items(), *KEPT_TEXT.items()]:
            rpc, request, metadata = make(text)
            try:
                code, error = fuzzer.call_and_check(rpc, request, metadata, lambda line: None)
            except AssertionError as failure:
                failures.append(f"{path} with {label} {text!r}: {str(failure).splitlines()[0]}")
                continue
            if label in KEPT_TEXT and code != grpc.StatusCode.OK:
                failures.append(f"{path} with {label} {text!r}: {code.name} {error.details()}, expected OK")
            elif label in REFUSED_TEXT and (code, error and violated_fields(error)) != (
                grpc.StatusCode.INVALID_ARGUMENT,
                {violation},
            ):
                failures.append(f"{path} with {label} {text!r}: {code.name}, expected INVALID_ARGUMENT on {violation}")
            if rpc.name == "StartLiveStream" and code == grpc.StatusCode.OK:  # so that the creator may go live again
                stream_id = fuzzer.world.pools["live_stream"][-1]  # the one just started (after_success)
                fuzzer.caller.call(
                    "EndLiveStream", gifts_pb2.EndLiveStreamRequest(request_id=rid(), stream_id=stream_id), SERVICE
                )
                fuzzer.world.remove("live_stream", stream_id)
    assert not failures, f"{len(failures)} display texts misjudged:\n" + "\n".join(failures)


def page_token_requests(fuzzer: Fuzzer) -> Iterator[tuple[Rpc, Message]]:
    """Every RPC with a page_token (from the descriptors) with every token of the pool: real ones of this and other
    lists and accounts, tampered, forged (base64 of our own formats with out-of-range positions), random, huge."""
    world = fuzzer.world
    for rpc in RPCS:
        fields = rpc.method.input_type.fields_by_name
        if "page_token" not in fields:
            continue
        enums = [fd for fd in fields.values() if fd.type == FieldDescriptor.TYPE_ENUM]
        variants = [{fd.name: value.number for fd in enums} for value in enums[0].enum_type.values[1:]] if enums else []
        for account in (world.users[0], world.creators[0]):
            for variant in variants or [{}]:
                for token in world.pools["page_token"]:
                    request = rpc.request_class()(page_token=token, **variant)
                    for name in ACCOUNT_FIELDS & set(fields):
                        setattr(request, name, account)
                    yield rpc, request


def test_every_page_token_is_served_or_refused(fuzzer: Fuzzer) -> None:
    """Each token once, to each list, not left to chance: served, or refused with INVALID_ARGUMENT."""
    failures = []
    for rpc, request in page_token_requests(fuzzer):
        try:
            code, _ = fuzzer.call_and_check(rpc, request, ADMIN, lambda line: None)
            assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), code.name
        except AssertionError as failure:
            token = base64.urlsafe_b64decode(request.page_token + "===").decode(errors="replace")[:200]
            failures.append(f"{rpc.name} {shorten(request, 200)} (decoded {token!r}): {str(failure).splitlines()[0]}")
    assert not failures, f"{len(failures)} page tokens failed:\n" + "\n".join(failures)


async def test_money_identities_hold_after_fuzzing(stack: Stack) -> None:
    """The checks of `coinstream reconcile` over the three databases once settlement has caught up (the session's
    stack fixture runs them again after the last test)."""
    violations = await all_violations(stack)
    assert violations == [], "money identities broken:\n" + "\n".join(violations)
