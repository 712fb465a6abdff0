"""protobuf ⇄ domain for the wallet, in one place: requests into the use cases' commands, their results into
responses, enums both ways, and the Reply of each idempotent RPC (its result kept as the response message, so a
replay decodes the stored message and answers the identical response)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeVar

from coinstream.type.v1 import money_pb2
from coinstream.wallet.v1 import wallet_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from services.runtime.errors import AppError
from services.runtime.requests import MessageReply, RequestKey
from services.wallet import domain

Result = TypeVar("Result")
ResponseT = TypeVar("ResponseT", bound=Message)

STATUS_TO_PROTO = {
    domain.AccountStatus.ACTIVE: wallet_pb2.ACCOUNT_STATUS_ACTIVE,
    domain.AccountStatus.FROZEN: wallet_pb2.ACCOUNT_STATUS_FROZEN,
}
STATUS_FROM_PROTO = {proto: status for status, proto in STATUS_TO_PROTO.items()}
KIND_TO_PROTO = {
    domain.TransactionKind.PURCHASE: wallet_pb2.TRANSACTION_KIND_PURCHASE,
    domain.TransactionKind.SPEND: wallet_pb2.TRANSACTION_KIND_SPEND,
    domain.TransactionKind.REVERSAL: wallet_pb2.TRANSACTION_KIND_REVERSAL,
    domain.TransactionKind.GIVEAWAY_SENT: wallet_pb2.TRANSACTION_KIND_GIVEAWAY_SENT,
    domain.TransactionKind.GIVEAWAY_RECEIVED: wallet_pb2.TRANSACTION_KIND_GIVEAWAY_RECEIVED,
}


# --- requests ---------------------------------------------------------------------------------------------------


def upsert_account(request: wallet_pb2.UpsertAccountRequest) -> domain.UpsertAccount:
    return domain.UpsertAccount(
        RequestKey.of(request), request.account_id, request.adult_verified, request.country_code
    )


def change_spending_limit(request: wallet_pb2.SetSpendingLimitRequest) -> domain.ChangeSpendingLimit:
    return domain.ChangeSpendingLimit(RequestKey.of(request), request.account_id, request.daily_coins)


def spend_ask(request: wallet_pb2.SpendCoinsRequest) -> domain.SpendAsk:
    key = RequestKey.of(request)
    assert key.method == domain.SPEND_METHOD
    return domain.SpendAsk(key.request_id, request.account_id, request.coins, request.reference, key.fingerprint)


def buy_coins(request: wallet_pb2.PurchaseCoinsRequest, caller: str) -> domain.BuyCoins:
    return domain.BuyCoins(
        RequestKey.of(request), request.account_id, request.package_id, request.payment_token, caller
    )


STORE_FROM_PROTO = {
    wallet_pb2.STORE_APP_STORE: domain.Store.APP_STORE,
    wallet_pb2.STORE_GOOGLE_PLAY: domain.Store.GOOGLE_PLAY,
}
STORE_TO_PROTO = {store: proto for proto, store in STORE_FROM_PROTO.items()}
RAIL_STORES = {store.value: store for store in domain.Store}


def redeem_store_purchase(request: wallet_pb2.RedeemStorePurchaseRequest, caller: str) -> domain.RedeemStorePurchase:
    return domain.RedeemStorePurchase(
        RequestKey.of(request),
        request.account_id,
        STORE_FROM_PROTO[request.store],
        request.signed_transaction,
        request.purchase_token,
        request.product_id,
        caller,
    )


def reverse_purchase(request: wallet_pb2.ReversePurchaseRequest) -> domain.ReversePurchase:
    return domain.ReversePurchase(RequestKey.of(request), request.purchase_id, request.reason, request.coins)


def make_giveaway(request: wallet_pb2.CreateGiveawayRequest) -> domain.MakeGiveaway:
    return domain.MakeGiveaway(
        RequestKey.of(request),
        request.creator_id,
        tuple(request.winner_ids),
        request.coins_per_winner,
    )


def new_promotion(
    request: wallet_pb2.CreatePromotionRequest, starts_at: datetime | None, ends_at: datetime | None
) -> domain.NewPromotion:
    bonus = request.WhichOneof("bonus")
    return domain.NewPromotion(
        key=RequestKey.of(request),
        name=request.name,
        starts_at=starts_at,
        ends_at=ends_at,
        min_package_coins=request.min_package_coins,
        bonus_percent=request.bonus_percent if bonus == "bonus_percent" else None,
        bonus_coins=request.bonus_coins if bonus == "bonus_coins" else None,
        first_purchase_only=request.first_purchase_only,
        max_uses_per_account=request.max_uses_per_account,
    )


def end_promotion(request: wallet_pb2.EndPromotionRequest) -> domain.EndPromotion:
    return domain.EndPromotion(RequestKey.of(request), request.promotion_id)


# --- results ----------------------------------------------------------------------------------------------------


def account_message(account: domain.Account) -> wallet_pb2.Account:
    """An account as seen at a moment (domain.Account.seen_at): its limit in force, and a change still pending."""
    limit = account.spending_limit
    message = wallet_pb2.Account(
        account_id=account.account_id,
        adult_verified=account.adult_verified,
        country_code=account.country_code,
        status=STATUS_TO_PROTO[account.status],
        spending_limit=wallet_pb2.SpendingLimit(daily_coins=limit.daily_coins),
    )
    if limit.pending_effective_at is not None:
        assert limit.pending_daily_coins is not None
        message.spending_limit.pending.daily_coins = limit.pending_daily_coins
        message.spending_limit.pending.effective_at.CopyFrom(_timestamp(limit.pending_effective_at))
    return message


def account_from_message(message: wallet_pb2.Account) -> domain.Account:
    limit = message.spending_limit
    pending = limit.pending if limit.HasField("pending") else None
    return domain.Account(
        account_id=message.account_id,
        adult_verified=message.adult_verified,
        country_code=message.country_code,
        status=STATUS_FROM_PROTO[message.status],
        spending_limit=domain.SpendingLimit(
            limit.daily_coins,
            None if pending is None else pending.daily_coins,
            None if pending is None else pending.effective_at.ToDatetime(tzinfo=UTC),
        ),
    )


def balance_message(account_id: str, balance: domain.Balance) -> wallet_pb2.Balance:
    return wallet_pb2.Balance(
        account_id=account_id, coins=balance.coins, paid_coins=balance.paid_coins, bonus_coins=balance.bonus_coins
    )


def _balance(message: wallet_pb2.Balance) -> domain.Balance:
    return domain.Balance(message.paid_coins, message.bonus_coins)


def spent_message(spent: domain.Spent) -> wallet_pb2.SpendCoinsResponse:
    return wallet_pb2.SpendCoinsResponse(
        transaction_id=spent.transaction_id,
        balance=balance_message(spent.account_id, spent.balance),
        paid_coins=spent.split.paid_coins,
        bonus_coins=spent.split.bonus_coins,
    )


def _spent(message: wallet_pb2.SpendCoinsResponse) -> domain.Spent:
    split = domain.Split(message.paid_coins, message.bonus_coins)
    return domain.Spent(message.transaction_id, message.balance.account_id, _balance(message.balance), split)


def spend_outcome(outcome: domain.Spent | AppError) -> wallet_pb2.SpendCoinsOutcome:
    if isinstance(outcome, AppError):
        refusal = wallet_pb2.SpendCoinsRefusal(code=outcome.code.name, reason=outcome.reason, message=outcome.message)
        return wallet_pb2.SpendCoinsOutcome(refused=refusal)
    return wallet_pb2.SpendCoinsOutcome(spent=spent_message(outcome))


def bought_message(bought: domain.Bought) -> wallet_pb2.PurchaseCoinsResponse:
    return wallet_pb2.PurchaseCoinsResponse(
        purchase=wallet_pb2.Purchase(
            purchase_id=bought.purchase_id,
            package_id=bought.package_id,
            coins=bought.coins,
            bonus_coins=bought.bonus_coins,
            promotion_id=bought.promotion_id or "",
            status=wallet_pb2.PURCHASE_STATUS_PENDING if bought.pending else wallet_pb2.PURCHASE_STATUS_COMPLETED,
        ),
        balance=balance_message(bought.account_id, bought.balance),
        client_action_secret=bought.client_action_secret,
    )


PURCHASE_STATE_TO_PROTO = {
    domain.PurchaseState.PENDING: wallet_pb2.PURCHASE_STATUS_PENDING,
    domain.PurchaseState.COMPLETED: wallet_pb2.PURCHASE_STATUS_COMPLETED,
    domain.PurchaseState.PARTIALLY_REVERSED: wallet_pb2.PURCHASE_STATUS_PARTIALLY_REVERSED,
    domain.PurchaseState.REVERSED: wallet_pb2.PURCHASE_STATUS_REVERSED,
    domain.PurchaseState.FAILED: wallet_pb2.PURCHASE_STATUS_FAILED,
}


def purchase_message(view: domain.PurchaseView) -> wallet_pb2.Purchase:
    purchase = view.purchase
    return wallet_pb2.Purchase(
        purchase_id=purchase.purchase_id,
        package_id=purchase.package_id,
        coins=purchase.coins,
        bonus_coins=purchase.bonus_coins,
        promotion_id=purchase.promotion_id or "",
        account_id=purchase.account_id,
        status=PURCHASE_STATE_TO_PROTO[view.state],
        rail=purchase.rail,
        price_paid=money_pb2.Money(currency_code=purchase.currency_code, amount_minor=purchase.price_minor),
        storefront=purchase.storefront_country,
        terms_version=purchase.terms_version,
        store_transaction_id=purchase.store_transaction_id or "",
        created_at=_timestamp(view.created_at),
        reversed_coins=view.reversed.paid_coins,
        reversed_bonus_coins=view.reversed.bonus_coins,
        store=_store_of(purchase.rail),
    )


def _store_of(rail: str) -> wallet_pb2.Store.ValueType:
    store = RAIL_STORES.get(rail)
    return wallet_pb2.STORE_UNSPECIFIED if store is None else STORE_TO_PROTO[store]


PURCHASE_STATE_FROM_PROTO = {proto: state for state, proto in PURCHASE_STATE_TO_PROTO.items()}


def redeemed_message(redeemed: domain.Redeemed) -> wallet_pb2.RedeemStorePurchaseResponse:
    return wallet_pb2.RedeemStorePurchaseResponse(
        purchase=purchase_message(redeemed.view),
        balance=balance_message(redeemed.view.purchase.account_id, redeemed.balance),
    )


def _redeemed(message: wallet_pb2.RedeemStorePurchaseResponse) -> domain.Redeemed:
    """A kept answer read back (a replay): the purchase as it was answered then."""
    kept = message.purchase
    purchase = domain.Purchase(
        purchase_id=kept.purchase_id,
        request_id="",
        account_id=kept.account_id,
        package_id=kept.package_id,
        coins=kept.coins,
        bonus_coins=kept.bonus_coins,
        price_minor=kept.price_paid.amount_minor,
        currency_code=kept.price_paid.currency_code,
        payment_token="",
        status=domain.PurchaseStatus.COMPLETED,
        transaction_id=None,
        promotion_id=kept.promotion_id or None,
        rail=kept.rail,
        store_transaction_id=kept.store_transaction_id or None,
        storefront_country=kept.storefront,
        terms_version=kept.terms_version,
    )
    reversed_ = domain.Split(kept.reversed_coins, kept.reversed_bonus_coins)
    view = domain.PurchaseView(purchase, kept.created_at.ToDatetime(tzinfo=UTC), reversed_)
    return domain.Redeemed(view, _balance(message.balance))


def _bought(message: wallet_pb2.PurchaseCoinsResponse) -> domain.Bought:
    purchase = message.purchase
    return domain.Bought(
        purchase_id=purchase.purchase_id,
        account_id=message.balance.account_id,
        package_id=purchase.package_id,
        coins=purchase.coins,
        bonus_coins=purchase.bonus_coins,
        promotion_id=purchase.promotion_id or None,
        balance=_balance(message.balance),
        pending=purchase.status == wallet_pb2.PURCHASE_STATUS_PENDING,
        client_action_secret=message.client_action_secret,
    )


def reversed_message(reversal: domain.Reversed) -> wallet_pb2.ReversePurchaseResponse:
    return wallet_pb2.ReversePurchaseResponse(
        transaction_id=reversal.transaction_id,
        balance=balance_message(reversal.account_id, reversal.balance),
        account_status=STATUS_TO_PROTO[reversal.account_status],
        coins=reversal.reversed.paid_coins,
        bonus_coins=reversal.reversed.bonus_coins,
        removed_coins=reversal.removed_coins,
        clawed_back_coins=reversal.clawed_back_coins,
        charged_coins=reversal.charged_coins,
    )


def _reversed(message: wallet_pb2.ReversePurchaseResponse) -> domain.Reversed:
    return domain.Reversed(
        message.transaction_id,
        message.balance.account_id,
        _balance(message.balance),
        STATUS_FROM_PROTO[message.account_status],
        domain.Split(message.coins, message.bonus_coins),
        message.removed_coins,
        message.clawed_back_coins,
        message.charged_coins,
    )


def giveaway_message(giveaway: domain.GiveawayMade) -> wallet_pb2.CreateGiveawayResponse:
    return wallet_pb2.CreateGiveawayResponse(
        giveaway=wallet_pb2.Giveaway(
            giveaway_id=giveaway.giveaway_id, total_coins=giveaway.total_coins, winner_ids=giveaway.winner_ids
        ),
        balance=balance_message(giveaway.creator_id, giveaway.balance),
    )


def _giveaway(message: wallet_pb2.CreateGiveawayResponse) -> domain.GiveawayMade:
    return domain.GiveawayMade(
        giveaway_id=message.giveaway.giveaway_id,
        creator_id=message.balance.account_id,
        winner_ids=tuple(message.giveaway.winner_ids),
        total_coins=message.giveaway.total_coins,
        balance=_balance(message.balance),
    )


def promotion_message(promotion: domain.PromotionView) -> wallet_pb2.Promotion:
    message = wallet_pb2.Promotion(
        promotion_id=promotion.promotion_id,
        name=promotion.name,
        min_package_coins=promotion.min_package_coins,
        first_purchase_only=promotion.first_purchase_only,
        max_uses_per_account=promotion.max_uses_per_account,
        status=wallet_pb2.PROMOTION_STATUS_ENDED if promotion.ended else wallet_pb2.PROMOTION_STATUS_ACTIVE,
    )
    message.starts_at.CopyFrom(_timestamp(promotion.starts_at))
    if promotion.ends_at is not None:
        message.ends_at.CopyFrom(_timestamp(promotion.ends_at))
    if promotion.bonus_percent is not None:
        message.bonus_percent = promotion.bonus_percent
    else:
        assert promotion.bonus_coins is not None
        message.bonus_coins = promotion.bonus_coins
    return message


def _promotion(message: wallet_pb2.Promotion) -> domain.PromotionView:
    bonus = message.WhichOneof("bonus")
    return domain.PromotionView(
        promotion_id=message.promotion_id,
        name=message.name,
        starts_at=message.starts_at.ToDatetime(tzinfo=UTC),
        ends_at=message.ends_at.ToDatetime(tzinfo=UTC) if message.HasField("ends_at") else None,
        min_package_coins=message.min_package_coins,
        bonus_percent=message.bonus_percent if bonus == "bonus_percent" else None,
        bonus_coins=message.bonus_coins if bonus == "bonus_coins" else None,
        first_purchase_only=message.first_purchase_only,
        max_uses_per_account=message.max_uses_per_account,
        ended=message.status == wallet_pb2.PROMOTION_STATUS_ENDED,
    )


def package_message(offer: domain.PackageOffer) -> wallet_pb2.CoinPackage:
    package = offer.package
    return wallet_pb2.CoinPackage(
        package_id=package.package_id,
        coins=package.coins,
        bonus_coins=offer.bonus_coins,
        price=money_pb2.Money(currency_code=package.currency_code, amount_minor=package.price_minor),
    )


def transaction_message(account_id: str, movement: domain.Movement) -> wallet_pb2.Transaction:
    message = wallet_pb2.Transaction(
        transaction_id=movement.transaction_id,
        kind=KIND_TO_PROTO[movement.kind_seen_by(account_id)],
        coins_delta=movement.paid_delta + movement.bonus_delta,
        balance_after=movement.paid_after + movement.bonus_after,
        reference=movement.reference,
        paid_coins_delta=movement.paid_delta,
        bonus_coins_delta=movement.bonus_delta,
    )
    message.created_at.CopyFrom(_timestamp(movement.created_at))
    return message


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


# --- what idempotent RPCs keep with their keys ------------------------------------------------------------------


ACCOUNT_UPSERTED: MessageReply[domain.Account, wallet_pb2.UpsertAccountResponse] = MessageReply(
    wallet_pb2.UpsertAccountResponse,
    lambda account: wallet_pb2.UpsertAccountResponse(account=account_message(account)),
    lambda message: account_from_message(message.account),
)
SPENDING_LIMIT_SET: MessageReply[domain.Account, wallet_pb2.SetSpendingLimitResponse] = MessageReply(
    wallet_pb2.SetSpendingLimitResponse,
    lambda account: wallet_pb2.SetSpendingLimitResponse(account=account_message(account)),
    lambda message: account_from_message(message.account),
)
SPENT = MessageReply(wallet_pb2.SpendCoinsResponse, spent_message, _spent)
BOUGHT = MessageReply(wallet_pb2.PurchaseCoinsResponse, bought_message, _bought)
REVERSED = MessageReply(wallet_pb2.ReversePurchaseResponse, reversed_message, _reversed)
REDEEMED = MessageReply(wallet_pb2.RedeemStorePurchaseResponse, redeemed_message, _redeemed)
GIVEAWAY_MADE = MessageReply(wallet_pb2.CreateGiveawayResponse, giveaway_message, _giveaway)
PROMOTION_CREATED: MessageReply[domain.PromotionView, wallet_pb2.CreatePromotionResponse] = MessageReply(
    wallet_pb2.CreatePromotionResponse,
    lambda promotion: wallet_pb2.CreatePromotionResponse(promotion=promotion_message(promotion)),
    lambda message: _promotion(message.promotion),
)
PROMOTION_ENDED: MessageReply[domain.PromotionView, wallet_pb2.EndPromotionResponse] = MessageReply(
    wallet_pb2.EndPromotionResponse,
    lambda promotion: wallet_pb2.EndPromotionResponse(promotion=promotion_message(promotion)),
    lambda message: _promotion(message.promotion),
)
