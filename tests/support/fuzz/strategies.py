"""Hypothesis strategies derived from request message descriptors, so that a new field is fuzzed without touching
them (a field of a type without a strategy fails loudly): plans of requests that are plausible (often valid),
plausible but for one field, or anything at all; and raw bytes that do not parse as the request type. Ids made during
setup or by earlier calls are Refs, picked when the call is made."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

from tests.support.fuzz.rpcs import PACKAGE_IDS, RUN, SEEDED_GIFT_IDS


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
