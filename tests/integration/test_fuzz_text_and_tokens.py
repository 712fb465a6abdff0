"""Display text and page tokens end to end, each case sent once rather than left to chance (the machinery of
test_fuzz.py, tests/support/fuzz/): every display-text field refuses C0/C1 controls, bidi overrides and invisible
characters and keeps emoji; every page token of the pool — real ones of this and other lists and accounts, tampered,
forged, random, huge — is served or refused with INVALID_ARGUMENT by every list."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2
from coinstream.wallet.v1 import wallet_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tests.support.errors import violated_fields
from tests.support.fuzz.fuzzer import Fuzzer, fuzzing, shorten
from tests.support.fuzz.rpcs import RPCS, RUN, Rpc
from tests.support.fuzz.strategies import ACCOUNT_FIELDS
from tests.support.fuzz.world import ADMIN, SERVICE, Metadata, rid
from tests.support.stack import Stack


@pytest.fixture(scope="module")
def fuzzer(stack: Stack) -> Iterator[Fuzzer]:
    with fuzzing(stack) as fuzz:
        yield fuzz


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
    are accepted (tests/unit/runtime/test_pure_parts.py has such cases against the Validator alone)."""
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
