"""What the fuzzer calls with and through: synchronous gRPC calls by method path (no stubs needed), tokens per
principal, and the world made in setup — accounts with coins, creators with diamonds, streams, withdrawals,
a promotion, page tokens — that grows as calls succeed."""

from __future__ import annotations

import base64
import json
import random
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import grpc
from coinstream.gifts.v1 import gifts_pb2
from coinstream.payouts.v1 import payouts_pb2
from coinstream.wallet.v1 import wallet_pb2
from google.protobuf.message import Message

from services.runtime.auth import mint_token
from tests.support.fuzz.rpcs import RPCS, RUN, Rpc
from tests.support.fuzz.strategies import Ref
from tests.support.stack import AUTH_SECRET, Stack

CALL_TIMEOUT_SECONDS = 10.0
SETTLE_SECONDS = 15.0
SERVICE_ADDRESS = {"WalletService": "wallet", "GiftService": "gifts", "PayoutService": "payouts"}


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

    def bidirectional(self, rpc: Rpc) -> grpc.StreamStreamMultiCallable:
        return self._channel(rpc).stream_stream(
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
    tag = uuid.uuid4().hex[:8]  # this world's own accounts and gift: another world of the run must not share them

    def account(prefix: str, *, adult: bool = True) -> str:
        account_id = f"fz{prefix}-{tag}"
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
        gift_id=f"fzgift-{tag}",
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
