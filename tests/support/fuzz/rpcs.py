"""What is fuzzed: every RPC of the three services, enumerated from the generated service descriptors, with what it
may change (EFFECTS: a new RPC must be put there), and what the rest of the suite shares that the fuzzer never
touches."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import grpc
from coinstream.gifts.v1 import gifts_pb2
from coinstream.payouts.v1 import payouts_pb2
from coinstream.wallet.v1 import wallet_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

RUN = uuid.uuid4().hex[:8]  # ids made by this run
PROTO_MODULES = (wallet_pb2, gifts_pb2, payouts_pb2)


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
        "GetPurchase": READ,
        "RedeemStorePurchase": MONEY,
        "CreateGiveaway": MONEY,
        "SetSpendingLimit": STATE,
    },
    "coinstream.gifts.v1.GiftService": {
        "ListGifts": READ,
        "StartLiveStream": STATE,
        "EndLiveStream": STATE,
        "SendGift": MONEY,
        "SendGifts": MONEY,
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
        "ListClawbacks": READ,
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
