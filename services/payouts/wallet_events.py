"""Payouts' consumer of the wallet's events (stream WALLET, durable consumer payouts-wallet-events): each event
decoded here and applied by clawbacks.WalletEvents in one database transaction, exactly once by its Nats-Msg-Id, and
acked only after that commit (a crash before the ack redelivers it, which the inbox then ignores).

An event that cannot be read is never dropped: the wallet is its only publisher (runtime/nats_permissions.py), so it
is a bug to fix, and the event waits, redelivered with a pause, loudly logged, until a release reads it. An event of a
kind this release does not know (a newer wallet) is acked and logged: nothing here depends on it."""

from __future__ import annotations

import structlog
from coinstream.events.v1 import events_pb2
from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import Counter

from services.payouts import domain
from services.payouts.clawbacks import WalletEvents
from services.runtime.faults import crash_point
from services.runtime.messaging import (
    ACCOUNT_STATUS_CHANGED_SUBJECT,
    PURCHASE_REVERSED_SUBJECT,
    WALLET_EVENTS,
    WALLET_EVENTS_CONSUMER,
    WALLET_STREAM,
    fetch,
    quietly,
)
from services.runtime.validation import Validator

RETRY_PAUSE_SECONDS = 1.0

WALLET_EVENTS_APPLIED = Counter(
    "coinstream_payouts_wallet_events_total", "Wallet events consumed, by subject and outcome", ["subject", "outcome"]
)

log = structlog.get_logger()


class UnreadableEvent(Exception):
    pass


class WalletEventsConsumer:
    def __init__(
        self, js: JetStreamContext, events: WalletEvents, *, batch_size: int, fetch_timeout_seconds: float
    ) -> None:
        self._js = js
        self._events = events
        self._batch_size = batch_size
        self._fetch_timeout_seconds = fetch_timeout_seconds

    async def run_forever(self) -> None:
        # durable= must be explicit: pull_subscribe ignores ConsumerConfig.durable_name (nats.py #603).
        subscription = await self._js.pull_subscribe(
            WALLET_EVENTS, durable=WALLET_EVENTS_CONSUMER, stream=WALLET_STREAM
        )
        try:
            while True:
                for message in await fetch(subscription, self._batch_size, self._fetch_timeout_seconds):
                    await self._handle(message)
        finally:
            await quietly(subscription.unsubscribe())

    async def _handle(self, message: Msg) -> None:
        msg_id = (message.headers or {}).get("Nats-Msg-Id") or f"{WALLET_STREAM}:{message.metadata.sequence.stream}"
        try:
            outcome = await self._apply(message, msg_id)
        except UnreadableEvent as error:
            log.error("wallet_event_unreadable", subject=message.subject, msg_id=msg_id, error=str(error))
            await self._retry_later(message, message.subject, "unreadable")
            return
        except Exception as error:
            log.warning("wallet_event_failed", subject=message.subject, msg_id=msg_id, error=repr(error))
            await self._retry_later(message, message.subject, "failed")
            return
        crash_point("payouts.after_wallet_event_commit")
        await quietly(message.ack())
        WALLET_EVENTS_APPLIED.labels(message.subject, outcome).inc()

    async def _apply(self, message: Msg, msg_id: str) -> str:
        if message.subject == PURCHASE_REVERSED_SUBJECT:
            purchase_id, clawbacks = decode_purchase_reversed(message.data)
            await self._events.purchase_reversed(msg_id, purchase_id, clawbacks)
            return "applied"
        if message.subject == ACCOUNT_STATUS_CHANGED_SUBJECT:
            account_id, frozen, version = decode_account_status_changed(message.data)
            await self._events.account_status_changed(msg_id, account_id, frozen=frozen, version=version)
            return "applied"
        log.warning("wallet_event_unknown", subject=message.subject, msg_id=msg_id)
        return "ignored"

    @staticmethod
    async def _retry_later(message: Msg, subject: str, outcome: str) -> None:
        WALLET_EVENTS_APPLIED.labels(subject, outcome).inc()
        await quietly(message.nak(delay=RETRY_PAUSE_SECONDS))


def decode_purchase_reversed(data: bytes) -> tuple[str, list[domain.Clawback]]:
    event = events_pb2.PurchaseReversed()
    _parse(event, data)
    check = Validator()
    check.opaque_id(event.reversal_id, "reversal_id")
    check.opaque_id(event.purchase_id, "purchase_id")
    for index, gift in enumerate(event.gifts):
        check.opaque_id(gift.gift_transaction_id, f"gifts[{index}].gift_transaction_id")
        if gift.coins <= 0:
            check.fail(f"gifts[{index}].coins", "must be positive")
    if check.violations:
        raise UnreadableEvent("; ".join(f"{v.field} {v.description}" for v in check.violations))
    clawbacks = [domain.Clawback(event.reversal_id, gift.gift_transaction_id, gift.coins) for gift in event.gifts]
    return event.purchase_id, clawbacks


def decode_account_status_changed(data: bytes) -> tuple[str, bool, int]:
    event = events_pb2.AccountStatusChanged()
    _parse(event, data)
    check = Validator()
    check.identifier(event.account_id, "account_id")
    if event.version <= 0:
        check.fail("version", "must be positive")
    if check.violations:
        raise UnreadableEvent("; ".join(f"{v.field} {v.description}" for v in check.violations))
    return event.account_id, event.frozen, event.version


def _parse(event: events_pb2.PurchaseReversed | events_pb2.AccountStatusChanged, data: bytes) -> None:
    try:
        event.ParseFromString(data)
    except DecodeError as error:
        raise UnreadableEvent(f"not a {event.DESCRIPTOR.full_name}: {error}") from None
