"""gRPC entrypoint of the wallet: who may call (declared on each RPC), check input, convert the request to a
command (convert.py), call one use case, convert its result back."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from coinstream.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from services.runtime import limits, pages
from services.runtime.auth import ROLE_ADMIN, ROLE_SERVICE, current_principal
from services.runtime.authorization import (
    allow_any_caller,
    allow_owner,
    allow_resource_owner,
    allow_roles,
    may_see_resource,
)
from services.runtime.idempotency import scope_to_caller
from services.runtime.interceptors import Context
from services.runtime.validation import Validator, page_size
from services.wallet import convert
from services.wallet.domain import MAX_GIVEAWAY_WINNERS
from services.wallet.service import WalletService, purchase_not_found

COUNTRY_CODE = re.compile(r"^[A-Z]{2}$")
MAX_SPENDS_PER_BATCH = 1000
MAX_SPEND_COINS = limits.MAX_GIFT_COINS  # the dearest gift; spends are for gifts
MAX_COINS_PER_WINNER = 1_000_000
MAX_PROMOTION_BONUS_COINS = 1_000_000
MAX_PROMOTION_USES = 1_000_000
# 0001-01-01 .. 9999-12-31: what a datetime can hold.
TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)
STAFF = (ROLE_SERVICE, ROLE_ADMIN)
# A StoreKit 2 signed transaction is a JWS of about 4 KB (three certificates in its header); Google Play's purchase
# tokens are a few hundred characters; product ids are at most 150 (Play) or 255 characters (App Store).
MAX_SIGNED_TRANSACTION_CHARS = 32_768
MAX_PURCHASE_TOKEN_CHARS = 4096
MAX_STORE_PRODUCT_ID_CHARS = 255  # backends and admins, who act on any account


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    def __init__(self, wallet: WalletService) -> None:
        self._wallet = wallet

    @allow_roles(*STAFF)
    async def UpsertAccount(
        self, request: wallet_pb2.UpsertAccountRequest, context: Context
    ) -> wallet_pb2.UpsertAccountResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.account_id, "account_id")
        if not COUNTRY_CODE.fullmatch(request.country_code):
            check.fail("country_code", "must be an ISO 3166-1 alpha-2 code such as 'US'")
        check.raise_if_invalid()
        scope_to_caller(request)
        account = await self._wallet.upsert_account(convert.upsert_account(request))
        return convert.ACCOUNT_UPSERTED.to_message(account)

    @allow_owner("account_id", or_roles=STAFF)
    async def GetAccount(
        self, request: wallet_pb2.GetAccountRequest, context: Context
    ) -> wallet_pb2.GetAccountResponse:
        _check_account_id(request.account_id)
        account = await self._wallet.get_account(request.account_id)
        return wallet_pb2.GetAccountResponse(account=convert.account_message(account))

    @allow_owner("account_id", or_roles=STAFF)
    async def GetBalance(
        self, request: wallet_pb2.GetBalanceRequest, context: Context
    ) -> wallet_pb2.GetBalanceResponse:
        check = Validator()
        check.identifier(request.account_id, "account_id")
        as_of = _timestamp(check, request, "as_of")
        check.raise_if_invalid()
        balance = await self._wallet.get_balance(request.account_id, as_of)
        return wallet_pb2.GetBalanceResponse(balance=convert.balance_message(request.account_id, balance))

    @allow_any_caller
    async def ListCoinPackages(
        self, request: wallet_pb2.ListCoinPackagesRequest, context: Context
    ) -> wallet_pb2.ListCoinPackagesResponse:
        offers = await self._wallet.list_packages()
        return wallet_pb2.ListCoinPackagesResponse(packages=[convert.package_message(offer) for offer in offers])

    @allow_owner("account_id", or_roles=(ROLE_SERVICE,))
    async def PurchaseCoins(
        self, request: wallet_pb2.PurchaseCoinsRequest, context: Context
    ) -> wallet_pb2.PurchaseCoinsResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.account_id, "account_id")
        check.text(request.package_id, "package_id", max_length=64)
        check.text(request.payment_token, "payment_token", max_length=512)
        check.raise_if_invalid()
        scope_to_caller(request)
        command = convert.buy_coins(request, caller=current_principal().subject)
        return convert.bought_message(await self._wallet.purchase(command))

    @allow_roles(ROLE_SERVICE)
    async def SpendCoins(
        self, request: wallet_pb2.SpendCoinsRequest, context: Context
    ) -> wallet_pb2.SpendCoinsResponse:
        check = Validator()
        _check_spend(check, request)
        check.raise_if_invalid()
        scope_to_caller(request)
        return convert.spent_message(await self._wallet.spend(convert.spend_ask(request)))

    @allow_roles(ROLE_SERVICE)
    async def SpendCoinsBatch(
        self, request: wallet_pb2.SpendCoinsBatchRequest, context: Context
    ) -> wallet_pb2.SpendCoinsBatchResponse:
        check = Validator()
        if not 1 <= len(request.spends) <= MAX_SPENDS_PER_BATCH:
            check.fail("spends", f"must hold 1-{MAX_SPENDS_PER_BATCH} spends")
        seen: set[str] = set()
        for index, spend in enumerate(request.spends):
            _check_spend(check, spend, prefix=f"spends[{index}].")
            if spend.request_id in seen:
                check.fail(f"spends[{index}].request_id", "is a duplicate within the batch")
            seen.add(spend.request_id)
        check.raise_if_invalid()
        for spend in request.spends:
            scope_to_caller(spend)
        outcomes = await self._wallet.spend_batch([convert.spend_ask(spend) for spend in request.spends])
        return wallet_pb2.SpendCoinsBatchResponse(outcomes=[convert.spend_outcome(outcome) for outcome in outcomes])

    @allow_owner("account_id", or_roles=STAFF)
    async def ListTransactions(
        self, request: wallet_pb2.ListTransactionsRequest, context: Context
    ) -> wallet_pb2.ListTransactionsResponse:
        check = Validator()
        check.identifier(request.account_id, "account_id")
        size = page_size(check, request.page_size)
        check.text(request.page_token, "page_token", max_length=pages.MAX_PAGE_TOKEN_LENGTH, required=False)
        check.raise_if_invalid()
        page = await self._wallet.list_transactions(request.account_id, size, request.page_token)
        return wallet_pb2.ListTransactionsResponse(
            transactions=[convert.transaction_message(request.account_id, movement) for movement in page.items],
            next_page_token=page.next_page_token,
        )

    @allow_roles(ROLE_ADMIN)
    async def CreatePromotion(
        self, request: wallet_pb2.CreatePromotionRequest, context: Context
    ) -> wallet_pb2.CreatePromotionResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.text(request.name, "name", max_length=100)
        starts_at = _timestamp(check, request, "starts_at")
        ends_at = _timestamp(check, request, "ends_at")
        if ends_at is not None and ends_at <= (starts_at or datetime.now(UTC)):
            check.fail("ends_at", "must be after starts_at (or after now when starts_at is unset)")
        check.int_range(request.min_package_coins, "min_package_coins", minimum=0, maximum=MAX_SPEND_COINS)
        bonus = request.WhichOneof("bonus")
        if bonus == "bonus_percent":
            check.int_range(request.bonus_percent, "bonus_percent", minimum=1, maximum=100)
        elif bonus == "bonus_coins":
            check.int_range(request.bonus_coins, "bonus_coins", minimum=1, maximum=MAX_PROMOTION_BONUS_COINS)
        else:
            check.fail("bonus_percent", "exactly one of bonus_percent or bonus_coins is required")
        check.int_range(request.max_uses_per_account, "max_uses_per_account", minimum=0, maximum=MAX_PROMOTION_USES)
        check.raise_if_invalid()
        scope_to_caller(request)
        promotion = await self._wallet.create_promotion(convert.new_promotion(request, starts_at, ends_at))
        return convert.PROMOTION_CREATED.to_message(promotion)

    @allow_roles(ROLE_ADMIN)
    async def ListPromotions(
        self, request: wallet_pb2.ListPromotionsRequest, context: Context
    ) -> wallet_pb2.ListPromotionsResponse:
        check = Validator()
        size = page_size(check, request.page_size)
        check.text(request.page_token, "page_token", max_length=pages.MAX_PAGE_TOKEN_LENGTH, required=False)
        check.raise_if_invalid()
        page = await self._wallet.list_promotions(size, request.page_token)
        return wallet_pb2.ListPromotionsResponse(
            promotions=[convert.promotion_message(promotion) for promotion in page.items],
            next_page_token=page.next_page_token,
        )

    @allow_roles(ROLE_ADMIN)
    async def EndPromotion(
        self, request: wallet_pb2.EndPromotionRequest, context: Context
    ) -> wallet_pb2.EndPromotionResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.opaque_id(request.promotion_id, "promotion_id")
        check.raise_if_invalid()
        scope_to_caller(request)
        promotion = await self._wallet.end_promotion(convert.end_promotion(request))
        return convert.PROMOTION_ENDED.to_message(promotion)

    @allow_roles(ROLE_ADMIN)
    async def ReversePurchase(
        self, request: wallet_pb2.ReversePurchaseRequest, context: Context
    ) -> wallet_pb2.ReversePurchaseResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.opaque_id(request.purchase_id, "purchase_id")
        check.text(request.reason, "reason", max_length=256)
        # 0: the whole purchase; a package never holds more coins than the dearest gift (checked again on the purchase).
        check.int_range(request.coins, "coins", minimum=0, maximum=MAX_SPEND_COINS)
        check.raise_if_invalid()
        scope_to_caller(request)
        return convert.reversed_message(await self._wallet.reverse_purchase(convert.reverse_purchase(request)))

    @allow_resource_owner(or_roles=STAFF)
    async def GetPurchase(
        self, request: wallet_pb2.GetPurchaseRequest, context: Context
    ) -> wallet_pb2.GetPurchaseResponse:
        check = Validator()
        check.opaque_id(request.purchase_id, "purchase_id")
        check.raise_if_invalid()
        view = await self._wallet.get_purchase(request.purchase_id)
        if not may_see_resource(view.purchase.account_id):  # someone else's looks exactly like a missing one
            raise purchase_not_found(request.purchase_id)
        return wallet_pb2.GetPurchaseResponse(purchase=convert.purchase_message(view))

    @allow_owner("account_id", or_roles=(ROLE_SERVICE,))
    async def RedeemStorePurchase(
        self, request: wallet_pb2.RedeemStorePurchaseRequest, context: Context
    ) -> wallet_pb2.RedeemStorePurchaseResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.account_id, "account_id")
        _check_store_proof(check, request)
        check.raise_if_invalid()
        scope_to_caller(request)
        command = convert.redeem_store_purchase(request, caller=current_principal().subject)
        return convert.redeemed_message(await self._wallet.redeem_store_purchase(command))

    @allow_owner("creator_id", or_roles=(ROLE_SERVICE,))
    async def CreateGiveaway(
        self, request: wallet_pb2.CreateGiveawayRequest, context: Context
    ) -> wallet_pb2.CreateGiveawayResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.creator_id, "creator_id")
        check.int_range(request.coins_per_winner, "coins_per_winner", minimum=1, maximum=MAX_COINS_PER_WINNER)
        _check_winners(check, request.creator_id, list(request.winner_ids))
        check.raise_if_invalid()
        scope_to_caller(request)
        return convert.giveaway_message(await self._wallet.create_giveaway(convert.make_giveaway(request)))

    # A self-set limit: only the owner sets it, not a backend or an admin acting for them.
    @allow_owner("account_id", or_roles=())
    async def SetSpendingLimit(
        self, request: wallet_pb2.SetSpendingLimitRequest, context: Context
    ) -> wallet_pb2.SetSpendingLimitResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.account_id, "account_id")
        check.int_range(request.daily_coins, "daily_coins", minimum=0, maximum=MAX_SPEND_COINS)
        check.raise_if_invalid()
        scope_to_caller(request)
        account = await self._wallet.set_spending_limit(convert.change_spending_limit(request))
        return convert.SPENDING_LIMIT_SET.to_message(account)


def _check_spend(check: Validator, spend: wallet_pb2.SpendCoinsRequest, prefix: str = "") -> None:
    check.request_id(spend.request_id, f"{prefix}request_id")
    check.identifier(spend.account_id, f"{prefix}account_id")
    check.int_range(spend.coins, f"{prefix}coins", minimum=1, maximum=MAX_SPEND_COINS)
    check.text(spend.reference, f"{prefix}reference", max_length=256, required=False)


def _check_account_id(account_id: str) -> None:
    check = Validator()
    check.identifier(account_id, "account_id")
    check.raise_if_invalid()


def _check_winners(check: Validator, creator_id: str, winner_ids: list[str]) -> None:
    if not 1 <= len(winner_ids) <= MAX_GIVEAWAY_WINNERS:
        check.fail("winner_ids", f"must hold 1-{MAX_GIVEAWAY_WINNERS} account ids")
        return
    seen: set[str] = set()
    for index, winner_id in enumerate(winner_ids):
        field = f"winner_ids[{index}]"
        check.identifier(winner_id, field)
        if winner_id == creator_id:
            check.fail(field, "must not be the creator")
        elif winner_id in seen:
            check.fail(field, "is a duplicate")
        seen.add(winner_id)


def _timestamp(check: Validator, request: Message, field: str) -> datetime | None:
    """An optional google.protobuf.Timestamp field as an aware datetime (None when unset)."""
    if not request.HasField(field):
        return None
    value: timestamp_pb2.Timestamp = getattr(request, field)
    if not TIMESTAMP_SECONDS[0] <= value.seconds <= TIMESTAMP_SECONDS[1] or not 0 <= value.nanos < 1_000_000_000:
        check.fail(field, "is not a valid timestamp")
        return None
    return value.ToDatetime(tzinfo=UTC)


def _check_store_proof(check: Validator, request: wallet_pb2.RedeemStorePurchaseRequest) -> None:
    """The proof its store needs, and nothing another store's would carry."""
    if request.store == wallet_pb2.STORE_APP_STORE:
        check.text(request.signed_transaction, "signed_transaction", max_length=MAX_SIGNED_TRANSACTION_CHARS)
        for name in ("purchase_token", "product_id"):
            if getattr(request, name):
                check.fail(name, "is for Google Play; an App Store purchase is its signed_transaction")
    elif request.store == wallet_pb2.STORE_GOOGLE_PLAY:
        check.text(request.purchase_token, "purchase_token", max_length=MAX_PURCHASE_TOKEN_CHARS)
        check.text(request.product_id, "product_id", max_length=MAX_STORE_PRODUCT_ID_CHARS)
        if request.signed_transaction:
            check.fail("signed_transaction", "is for the App Store; a Google Play purchase is its purchase_token")
    else:
        check.fail("store", "must be STORE_APP_STORE or STORE_GOOGLE_PLAY")
