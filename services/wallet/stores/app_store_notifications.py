"""POST /notifications/app-store: App Store Server Notifications V2 on the wallet's HTTP port (http_ingress.py).

The body is {"signedPayload": "<JWS>"}; the payload is verified by Apple's library (AppStoreVerifier) before anything
is looked at: a body that is no notification is refused 400, a payload that does not verify 401, and nothing moves.
Each notification takes effect once: its notificationUUID is recorded in the transaction that applies it. Those
Apple failed to deliver are fetched from its notification history (app_store_history.py) and handled by the same
AppStoreNotifications.handle.

- REFUND and REVOKE reverse the purchase of the transaction they carry, up to Apple's revocationPercentage (a
  partial refund) or whole; one that arrives before the transaction is redeemed waits for the redeem.
- CONSUMPTION_REQUEST (a customer asked Apple for a refund) is answered through the App Store Server API with what
  the purchase's coins became, when the buyers consented to that (AppStoreSettings).
- REFUND_REVERSED (Apple took a refund back) gives no coins back: they were reversed, and what the buyer's gifts earned
  was clawed back from creators; it is logged for a person to look at. TEST, REFUND_DECLINED, ONE_TIME_CHARGE and the
  rest are recorded and acknowledged, with nothing moved."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

import structlog
from appstoreserverlibrary.models.JWSTransactionDecodedPayload import JWSTransactionDecodedPayload
from appstoreserverlibrary.models.ResponseBodyV2DecodedPayload import ResponseBodyV2DecodedPayload
from appstoreserverlibrary.models.Type import Type

from services.runtime.errors import AppError
from services.runtime.http_ingress import Answer, Rejected, Unsigned
from services.wallet.domain import RailReversal, RailReversalOutcome, Store
from services.wallet.service import WalletService
from services.wallet.stores.app_store import AppStoreVerifier, ConsumptionReporter, revoked_share

log = structlog.get_logger()

PATH = "/notifications/app-store"
RAIL = Store.APP_STORE.value
REVERSING = frozenset({"REFUND", "REVOKE"})
CONSUMPTION_REQUEST = "CONSUMPTION_REQUEST"
REFUND_REVERSED = "REFUND_REVERSED"

Decoded = TypeVar("Decoded")


class AppStoreNotifications:
    """The endpoint's handler: verify, then one wallet use case per notification type."""

    def __init__(
        self, wallet: WalletService, verifier: AppStoreVerifier, consumption: ConsumptionReporter | None
    ) -> None:
        self._wallet = wallet
        self._verifier = verifier
        self._consumption = consumption

    async def __call__(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        return await self.handle(signed_payload(body))

    async def handle(self, signed_payload: str) -> Answer:
        """One notification's signedPayload, pushed or fetched from Apple's history (app_store_history.py): the same
        verification, and the same effect once per notificationUUID whichever path brings it first. Raises
        Unsigned (does not verify) or Rejected (verifies, but is no notification we take), with nothing moved."""
        notification = await self._verified(self._verifier.notification, signed_payload)
        notification_id, kind = notification.notificationUUID, notification.rawNotificationType
        if not notification_id or not kind:
            raise Rejected("a notification without its notificationUUID or notificationType")
        if kind in REVERSING:
            return await self._reverse(notification_id, kind, await self._transaction(notification))
        if kind == CONSUMPTION_REQUEST:
            return await self._answer_consumption(notification_id, await self._transaction(notification))
        if kind == REFUND_REVERSED:
            transaction = await self._transaction(notification)
            # The coins stay reversed (and the creators' diamonds clawed back): Apple gave the money back to us, so a
            # person decides whether the buyer gets anything.
            log.warning("app_store_refund_reversed", store_transaction_id=transaction.transactionId)
        return recorded(await self._wallet.record_notification(RAIL, notification_id, kind))

    async def _reverse(self, notification_id: str, kind: str, transaction: JWSTransactionDecodedPayload) -> Answer:
        if transaction.rawType != Type.CONSUMABLE.value:  # another of the app's products: never coins
            return recorded(await self._wallet.record_notification(RAIL, notification_id, kind))
        try:
            share = revoked_share(transaction)
        except AppError as refusal:
            raise Rejected(refusal.message) from None
        reason = f"App Store {kind}" + (
            f" (revocationReason {transaction.rawRevocationReason})"
            if transaction.rawRevocationReason is not None
            else ""
        )
        notice = RailReversal(RAIL, notification_id, _transaction_id(transaction), share, reason)
        outcome = await self._wallet.reverse_by_rail(notice, kind)
        return Answer({"outcome": outcome.value}, duplicate=outcome is RailReversalOutcome.DUPLICATE)

    async def _answer_consumption(self, notification_id: str, transaction: JWSTransactionDecodedPayload) -> Answer:
        """Answered before it is recorded: a failed answer is a 5xx, and Apple's retry answers again (a PUT)."""
        transaction_id = _transaction_id(transaction)
        if self._consumption is not None:
            consumption = await self._wallet.store_purchase_consumption(Store.APP_STORE, transaction_id)
            await self._consumption.report(transaction_id, consumption)
            log.info(
                "app_store_consumption_sent",
                store_transaction_id=transaction_id,
                consumption=consumption.status.value if consumption else "not_delivered",
            )
        return recorded(await self._wallet.record_notification(RAIL, notification_id, CONSUMPTION_REQUEST))

    async def _transaction(self, notification: ResponseBodyV2DecodedPayload) -> JWSTransactionDecodedPayload:
        signed = notification.data.signedTransactionInfo if notification.data else None
        if not signed:
            raise Rejected(f"a {notification.rawNotificationType} notification without its signedTransactionInfo")
        return await self._verified(self._verifier.transaction, signed)

    @staticmethod
    async def _verified(verify: Callable[[str], Awaitable[Decoded]], signed: str) -> Decoded:
        try:
            return await verify(signed)
        except AppError as refusal:
            if refusal.reason == "PAYMENT_VERIFICATION_FAILED":
                raise Unsigned(refusal.message) from None
            raise  # Apple's OCSP did not answer: a 5xx, and Apple sends it again later


def signed_payload(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        raise Rejected("the body is not JSON") from None
    payload = parsed.get("signedPayload") if isinstance(parsed, dict) else None
    if not isinstance(payload, str) or not payload:
        raise Rejected('the body is not {"signedPayload": "..."}')
    return payload


def recorded(first_time: bool) -> Answer:
    return Answer({"outcome": "recorded" if first_time else "duplicate"}, duplicate=not first_time)


def _transaction_id(transaction: JWSTransactionDecodedPayload) -> str:
    if not transaction.transactionId:
        raise Rejected("a transaction without its transactionId")
    return transaction.transactionId
