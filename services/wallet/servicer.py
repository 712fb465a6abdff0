"""gRPC entrypoint of the wallet: check input, check who is calling, call one use case."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import grpc
from coinstream.wallet.v1 import wallet_pb2, wallet_pb2_grpc
from google.protobuf import timestamp_pb2

from services.runtime import limits
from services.runtime.auth import ROLE_ADMIN, ROLE_SERVICE, ROLE_USER, current_principal
from services.runtime.errors import AppError, permission_denied
from services.runtime.idempotency import scope_to_caller
from services.runtime.validation import Validator, page_size
from services.wallet.domain import MAX_GIVEAWAY_WINNERS
from services.wallet.service import WalletService

COUNTRY_CODE = re.compile(r"^[A-Z]{2}$")
MAX_SPENDS_PER_BATCH = 1000
MAX_SPEND_COINS = limits.MAX_GIFT_COINS  # the dearest gift; spends are for gifts
MAX_COINS_PER_WINNER = 1_000_000
MAX_PROMOTION_BONUS_COINS = 1_000_000
MAX_PROMOTION_USES = 1_000_000
# 0001-01-01 .. 9999-12-31: what a datetime can hold.
TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)
OWNER_OR_STAFF = (ROLE_SERVICE, ROLE_ADMIN)


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    def __init__(self, wallet: WalletService) -> None:
        self._wallet = wallet

    async def UpsertAccount(
        self, request: wallet_pb2.UpsertAccountRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.UpsertAccountResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.account_id, "account_id")
        if not COUNTRY_CODE.fullmatch(request.country_code):
            check.fail("country_code", "must be an ISO 3166-1 alpha-2 code such as 'US'")
        check.raise_if_invalid()
        current_principal().require_any_role(ROLE_SERVICE, ROLE_ADMIN)
        scope_to_caller(request)
        return await self._wallet.upsert_account(request)

    async def GetAccount(
        self, request: wallet_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.GetAccountResponse:
        _check_account_id(request.account_id)
        current_principal().require_account_access(request.account_id, privileged_roles=OWNER_OR_STAFF)
        return wallet_pb2.GetAccountResponse(account=await self._wallet.get_account(request.account_id))

    async def GetBalance(
        self, request: wallet_pb2.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.GetBalanceResponse:
        check = Validator()
        check.identifier(request.account_id, "account_id")
        as_of = _timestamp(check, request, "as_of")
        check.raise_if_invalid()
        current_principal().require_account_access(request.account_id, privileged_roles=OWNER_OR_STAFF)
        return wallet_pb2.GetBalanceResponse(balance=await self._wallet.get_balance(request.account_id, as_of))

    async def ListCoinPackages(
        self, request: wallet_pb2.ListCoinPackagesRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.ListCoinPackagesResponse:
        return wallet_pb2.ListCoinPackagesResponse(packages=await self._wallet.list_packages())

    async def PurchaseCoins(
        self, request: wallet_pb2.PurchaseCoinsRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.PurchaseCoinsResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.account_id, "account_id")
        check.text(request.package_id, "package_id", max_length=64)
        check.text(request.payment_token, "payment_token", max_length=512)
        check.raise_if_invalid()
        current_principal().require_account_access(request.account_id, privileged_roles=(ROLE_SERVICE,))
        scope_to_caller(request)
        return await self._wallet.purchase(request)

    async def SpendCoins(
        self, request: wallet_pb2.SpendCoinsRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.SpendCoinsResponse:
        check = Validator()
        _check_spend(check, request)
        check.raise_if_invalid()
        current_principal().require_any_role(ROLE_SERVICE)
        scope_to_caller(request)
        return await self._wallet.spend(request)

    async def SpendCoinsBatch(
        self, request: wallet_pb2.SpendCoinsBatchRequest, context: grpc.aio.ServicerContext
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
        current_principal().require_any_role(ROLE_SERVICE)
        for spend in request.spends:
            scope_to_caller(spend)
        outcomes = await self._wallet.spend_batch(list(request.spends))
        return wallet_pb2.SpendCoinsBatchResponse(outcomes=[_spend_outcome(outcome) for outcome in outcomes])

    async def ListTransactions(
        self, request: wallet_pb2.ListTransactionsRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.ListTransactionsResponse:
        check = Validator()
        check.identifier(request.account_id, "account_id")
        size = page_size(check, request.page_size)
        check.text(request.page_token, "page_token", max_length=256, required=False)
        check.raise_if_invalid()
        current_principal().require_account_access(request.account_id, privileged_roles=OWNER_OR_STAFF)
        return await self._wallet.list_transactions(request.account_id, size, request.page_token)

    async def CreatePromotion(
        self, request: wallet_pb2.CreatePromotionRequest, context: grpc.aio.ServicerContext
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
        current_principal().require_any_role(ROLE_ADMIN)
        scope_to_caller(request)
        return await self._wallet.create_promotion(request, starts_at, ends_at)

    async def ListPromotions(
        self, request: wallet_pb2.ListPromotionsRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.ListPromotionsResponse:
        check = Validator()
        size = page_size(check, request.page_size)
        check.text(request.page_token, "page_token", max_length=256, required=False)
        check.raise_if_invalid()
        current_principal().require_any_role(ROLE_ADMIN)
        return await self._wallet.list_promotions(size, request.page_token)

    async def EndPromotion(
        self, request: wallet_pb2.EndPromotionRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.EndPromotionResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.opaque_id(request.promotion_id, "promotion_id")
        check.raise_if_invalid()
        current_principal().require_any_role(ROLE_ADMIN)
        scope_to_caller(request)
        return await self._wallet.end_promotion(request)

    async def ReversePurchase(
        self, request: wallet_pb2.ReversePurchaseRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.ReversePurchaseResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.opaque_id(request.purchase_id, "purchase_id")
        check.text(request.reason, "reason", max_length=256)
        check.raise_if_invalid()
        current_principal().require_any_role(ROLE_ADMIN)
        scope_to_caller(request)
        return await self._wallet.reverse_purchase(request)

    async def CreateGiveaway(
        self, request: wallet_pb2.CreateGiveawayRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.CreateGiveawayResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.creator_id, "creator_id")
        check.int_range(request.coins_per_winner, "coins_per_winner", minimum=1, maximum=MAX_COINS_PER_WINNER)
        _check_winners(check, request.creator_id, list(request.winner_ids))
        check.raise_if_invalid()
        current_principal().require_account_access(request.creator_id, privileged_roles=(ROLE_SERVICE,))
        scope_to_caller(request)
        return await self._wallet.create_giveaway(request)

    async def SetSpendingLimit(
        self, request: wallet_pb2.SetSpendingLimitRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.SetSpendingLimitResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.account_id, "account_id")
        check.int_range(request.daily_coins, "daily_coins", minimum=0, maximum=MAX_SPEND_COINS)
        check.raise_if_invalid()
        # A self-set limit: only the owner sets it, not a backend or an admin acting for them.
        principal = current_principal()
        if ROLE_USER not in principal.roles or principal.subject != request.account_id:
            raise permission_denied("only the account owner may set its spending limit")
        scope_to_caller(request)
        return await self._wallet.set_spending_limit(request)


def _check_spend(check: Validator, spend: wallet_pb2.SpendCoinsRequest, prefix: str = "") -> None:
    check.request_id(spend.request_id, f"{prefix}request_id")
    check.identifier(spend.account_id, f"{prefix}account_id")
    check.int_range(spend.coins, f"{prefix}coins", minimum=1, maximum=MAX_SPEND_COINS)
    check.text(spend.reference, f"{prefix}reference", max_length=256, required=False)


def _spend_outcome(outcome: wallet_pb2.SpendCoinsResponse | AppError) -> wallet_pb2.SpendCoinsOutcome:
    if isinstance(outcome, AppError):
        refusal = wallet_pb2.SpendCoinsRefusal(code=outcome.code.name, reason=outcome.reason, message=outcome.message)
        return wallet_pb2.SpendCoinsOutcome(refused=refusal)
    return wallet_pb2.SpendCoinsOutcome(spent=outcome)


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


def _timestamp(check: Validator, request: object, field: str) -> datetime | None:
    """An optional google.protobuf.Timestamp field as an aware datetime (None when unset)."""
    if not request.HasField(field):  # type: ignore[attr-defined]
        return None
    value: timestamp_pb2.Timestamp = getattr(request, field)
    if not TIMESTAMP_SECONDS[0] <= value.seconds <= TIMESTAMP_SECONDS[1] or not 0 <= value.nanos < 1_000_000_000:
        check.fail(field, "is not a valid timestamp")
        return None
    return value.ToDatetime(tzinfo=UTC)
