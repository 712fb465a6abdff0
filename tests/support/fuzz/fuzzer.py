"""One fuzzed call and its checks: the request made from a plan, sent as a principal, never INTERNAL, UNKNOWN or a
hang, an ErrorInfo on every failure, no money moved by a refusal; what a success made is remembered, what would leak
into other tests undone, and asynchronous effects waited for."""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from coinstream.gifts.v1 import gifts_pb2
from coinstream.payouts.v1 import payouts_pb2
from coinstream.wallet.v1 import wallet_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.rpc import status_pb2
from hypothesis import note
from hypothesis import strategies as st

from tests.support.errors import error_reason, violated_fields
from tests.support.fuzz.rpcs import MONEY, NEVER, PROTECTED_PROMOTION_IDS, REFUSALS, SEEDED_GIFT_IDS, Rpc
from tests.support.fuzz.strategies import ABSENT, Fresh, Ref, request_plans
from tests.support.fuzz.world import (
    ADMIN,
    CALL_TIMEOUT_SECONDS,
    SERVICE,
    Caller,
    Metadata,
    World,
    bearer,
    build_world,
    earnings,
    rid,
    wait_until,
)
from tests.support.stack import Stack


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
        if rpc.method.client_streaming:
            code, error, response = self.call_bidirectional(rpc, request, metadata)
        elif rpc.method.server_streaming:
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

    def call_bidirectional(
        self, rpc: Rpc, request: Message | bytes, metadata: Metadata
    ) -> tuple[grpc.StatusCode, Any, Any]:
        """A stream of requests each answered on its own (SendGifts), fuzzed one request per stream: the call's
        status when it fails, else its one answer, whose refusal (a google.rpc.Status) is checked as a call's."""
        try:
            responses = list(
                self.caller.bidirectional(rpc)(iter([request]), metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
            )
        except grpc.RpcError as error:
            return error.code(), error, None
        assert len(responses) == 1, f"{rpc.path}: {len(responses)} answers to one request"
        [response] = responses
        if isinstance(request, Message):  # (raw bytes may parse too: b"" is the empty request)
            assert response.request_id == request.request_id, f"{rpc.path} answered another request: {response}"
        if response.WhichOneof("outcome") == "error":
            refusal = AnsweredRefusal(response.error)
            return refusal.code(), refusal, None
        return grpc.StatusCode.OK, None, response.gift

    def recipient_lifetime(self, rpc: Rpc, request: Message | bytes) -> int | None:
        """Before a gift to a stream or video we know: its creator's diamonds, to wait for the settlement of a
        success."""
        if rpc.name not in ("SendGift", "SendGifts") or not isinstance(request, Message):
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
        elif name in ("SendGift", "SendGifts") and recipient_before is not None and response.gift.coins:
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


class AnsweredRefusal(grpc.RpcError):
    """One request's refusal inside a stream's answer, read like a failed call's (code, details, and the status in
    its trailing metadata, where coinstream.client.CallError looks)."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self._status = status

    def code(self) -> grpc.StatusCode:
        return next(code for code in grpc.StatusCode if code.value[0] == self._status.code)

    def details(self) -> str:
        return self._status.message

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return (("grpc-status-details-bin", self._status.SerializeToString()),)


def shorten(value: object, limit: int = 600) -> str:
    text = repr(value) if not isinstance(value, Message) else str(value).replace("\n", " ")
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


@contextmanager
def fuzzing(stack: Stack) -> Iterator[Fuzzer]:
    """A fuzzer with a world of its own on the stack; with COINSTREAM_FUZZ_STATS, the outcomes per RPC and reason
    printed at the end."""
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
