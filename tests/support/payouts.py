"""Payouts: creators funded through real gifts, GiftSent events made up and published straight to JetStream (on the
synthetic stack only: tests/conftest.py), waiting for settlement, payouts and dead letters, and checks of the payouts
ledger read from its database."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from coinstream.events.v1 import events_pb2
from coinstream.payouts.v1 import payouts_pb2
from google.protobuf.message import DecodeError

from services.payouts.dead_letters import DeadLetter, list_dead_letters
from services.payouts.settlement import DEFAULT_MAX_DELIVERIES
from services.runtime.limits import MAX_GIFT_QUANTITY
from services.runtime.messaging import GIFT_SENT_BATCH_SUBJECT, GIFT_SENT_SUBJECT, GIFTS_STREAM, SETTLEMENT_CONSUMER
from services.wallet.domain import DEFAULT_PACKAGES
from tests.support.clients import SERVICE, Clients, auth, new_id
from tests.support.factories import buy, make_account
from tests.support.gifts import post_video, video_gift
from tests.support.stack import Stack, operator_nats, record_synthetic_gifts

PUBLISH_CONCURRENCY = 200
WAIT_SECONDS = 30.0
# Five failing deliveries, a pause of a second after each: well within this.
DEAD_LETTER_WAIT_SECONDS = 4 * DEFAULT_MAX_DELIVERIES + 10.0

T = TypeVar("T")


def gift_sent(
    creator_id: str,
    coins: int,
    gift_transaction_id: str | None = None,
    *,
    stream_id: str | None = None,
    video_id: str = "",
    paid_coins: int = 0,
    bonus_coins: int = 0,
) -> events_pb2.GiftSent:
    """A gift to a new stream unless stream_id or video_id says where (stream_id="" and no video_id: neither)."""
    if stream_id is None:
        stream_id = "" if video_id else new_id("stream")
    event = events_pb2.GiftSent(
        gift_transaction_id=gift_transaction_id or f"gtx_{uuid.uuid4().hex}",
        sender_id=new_id("fan"),
        recipient_id=creator_id,
        stream_id=stream_id,
        video_id=video_id,
        gift_id="rose",
        quantity=coins,
        coins=coins,
        wallet_transaction_id=f"txn_{uuid.uuid4().hex}",
        paid_coins=paid_coins,
        bonus_coins=bonus_coins,
    )
    event.sent_at.GetCurrentTime()
    return event


async def publish(stack: Stack, events: list[events_pb2.GiftSent], message_ids: list[str] | None = None) -> list[bool]:
    """Publishes like the gifts service (Nats-Msg-Id = gift_transaction_id unless given); returns, per message,
    whether JetStream dropped it as a duplicate."""
    ids = message_ids or [event.gift_transaction_id for event in events]
    return await publish_raw(stack, [event.SerializeToString() for event in events], ids)


async def publish_batch(stack: Stack, events: list[events_pb2.GiftSent], message_id: str) -> bool:
    """Publishes the events as one GiftSentBatch, like the gifts service; returns whether JetStream dropped it as a
    duplicate."""
    record_synthetic_gifts(stack, [event.gift_transaction_id for event in events])
    payload = events_pb2.GiftSentBatch(gifts=events).SerializeToString()
    [duplicate] = await publish_raw(stack, [payload], [message_id], subject=GIFT_SENT_BATCH_SUBJECT)
    return duplicate


async def publish_raw(
    stack: Stack, payloads: list[bytes], message_ids: list[str], *, subject: str = GIFT_SENT_SUBJECT
) -> list[bool]:
    """On the synthetic stack only, which records the gifts the payloads name (tests/support/stack.py)."""
    if subject == GIFT_SENT_SUBJECT:
        record_synthetic_gifts(stack, filter(None, map(gift_named_by, payloads)))
    nc = await operator_nats(stack.nats)
    try:
        js = nc.jetstream()
        duplicates: list[bool] = []
        for start in range(0, len(payloads), PUBLISH_CONCURRENCY):
            acks = await asyncio.gather(
                *(
                    js.publish(subject, payload, headers={"Nats-Msg-Id": message_id})
                    for payload, message_id in zip(
                        payloads[start : start + PUBLISH_CONCURRENCY],
                        message_ids[start : start + PUBLISH_CONCURRENCY],
                        strict=True,
                    )
                )
            )
            duplicates += [bool(ack.duplicate) for ack in acks]
        return duplicates
    finally:
        await nc.drain()


def gift_named_by(payload: bytes) -> str:
    """The gift a payload names, if it reads as a GiftSent at all (tests also publish garbage)."""
    try:
        return events_pb2.GiftSent.FromString(payload).gift_transaction_id
    except DecodeError:
        return ""


async def eventually(probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], seconds: float = WAIT_SECONDS) -> T:
    """Polls probe() until done(result); returns the last result (the caller asserts on it)."""
    deadline = time.monotonic() + seconds
    while True:
        result = await probe()
        if done(result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


async def earnings(
    clients: Clients, creator_id: str, metadata: tuple[tuple[str, str], ...] = SERVICE
) -> payouts_pb2.Earnings:
    request = payouts_pb2.GetEarningsRequest(creator_id=creator_id)
    response = await clients.payouts.GetEarnings(request, metadata=metadata)
    return response.earnings


async def wait_for_lifetime(clients: Clients, creator_id: str, lifetime_diamonds: int) -> payouts_pb2.Earnings:
    return await eventually(
        lambda: earnings(clients, creator_id), lambda found: found.lifetime_diamonds >= lifetime_diamonds
    )


async def wait_for_diamonds(clients: Clients, creator_id: str, lifetime_diamonds: int) -> payouts_pb2.Earnings:
    """wait_for_lifetime as the creator sees it (with their own token), for about 10 s."""
    return await eventually(
        lambda: earnings(clients, creator_id, auth(creator_id)),
        lambda found: found.lifetime_diamonds >= lifetime_diamonds,
        seconds=10.0,
    )


# What fund() sends from the seeded catalog, dearest first: (gift_id, coin price).
FUNDING_GIFTS = (("disco_ball", 1000), ("rose", 1))
LARGEST_PACKAGE = max(DEFAULT_PACKAGES, key=lambda package: package.coins)


async def fund(clients: Clients, creator_id: str, diamonds: int, gifts: int = 1) -> None:
    """Credits the creator `diamonds` (at the default 1/1 rate) through real gifts, in `gifts` parts, so every credit
    has its completed gift: a fan buys the coins and sends them to a new video of the creator's (a video rather than
    a stream, which needs an adult-verified account that has no other stream live; any id may own a video)."""
    before = (await earnings(clients, creator_id)).lifetime_diamonds
    amounts = [diamonds // gifts] * gifts
    amounts[-1] += diamonds - sum(amounts)
    fan = await fan_with(clients, diamonds)
    video_id = (await post_video(clients, creator_id)).video_id
    sent = 0
    for coins in amounts:
        for gift_id, quantity in catalog_gifts_worth(coins):
            reply = await clients.gifts.SendGift(video_gift(fan, video_id, gift_id, quantity), metadata=SERVICE)
            sent += reply.gift.coins
    assert sent == diamonds, f"sent {sent} coins for {diamonds} diamonds: a funding gift's price changed"
    settled = await wait_for_lifetime(clients, creator_id, before + diamonds)
    assert settled.lifetime_diamonds == before + diamonds


async def fan_with(clients: Clients, coins: int) -> str:
    """A new account holding at least `coins` (the largest package, bought as often as needed, plus its bonus)."""
    fan = await make_account(clients)
    # One after another: the wallet counts an account's purchases still being charged towards its card-testing limit
    # (a tester fires many at once), so a burst of them would be refused.
    for _ in range(-(-coins // LARGEST_PACKAGE.coins)):
        await buy(clients, fan, LARGEST_PACKAGE.package_id)
    return fan


def catalog_gifts_worth(coins: int) -> list[tuple[str, int]]:
    """(gift_id, quantity) of FUNDING_GIFTS worth exactly `coins`, one SendGift each."""
    parts = []
    rest = coins
    for gift_id, price in FUNDING_GIFTS:
        quantity, rest = divmod(rest, price)
        assert quantity <= MAX_GIFT_QUANTITY, f"{coins} coins are too many for one gift of {gift_id}"
        if quantity:
            parts.append((gift_id, quantity))
    return parts


async def make_eligible(clients: Clients, creator_id: str, destination: str = "sandbox:ok-test") -> None:
    await clients.payouts.UpdateCreatorProfile(
        payouts_pb2.UpdateCreatorProfileRequest(
            request_id=new_id("req"), creator_id=creator_id, kyc_verified=True, payout_destination=destination
        ),
        metadata=SERVICE,
    )


async def withdraw(
    clients: Clients,
    creator_id: str,
    diamonds: int,
    request_id: str | None = None,
    metadata: tuple[tuple[str, str], ...] = SERVICE,
) -> payouts_pb2.Withdrawal:
    response = await clients.payouts.RequestWithdrawal(
        payouts_pb2.RequestWithdrawalRequest(
            request_id=request_id or new_id("req"), creator_id=creator_id, diamonds=diamonds
        ),
        metadata=metadata,
    )
    return response.withdrawal


async def cancel(
    clients: Clients,
    withdrawal_id: str,
    request_id: str | None = None,
    metadata: tuple[tuple[str, str], ...] = SERVICE,
) -> payouts_pb2.Withdrawal:
    request = payouts_pb2.CancelWithdrawalRequest(request_id=request_id or new_id("req"), withdrawal_id=withdrawal_id)
    return (await clients.payouts.CancelWithdrawal(request, metadata=metadata)).withdrawal


async def get_withdrawal(clients: Clients, withdrawal_id: str) -> payouts_pb2.Withdrawal:
    response = await clients.payouts.GetWithdrawal(
        payouts_pb2.GetWithdrawalRequest(withdrawal_id=withdrawal_id), metadata=SERVICE
    )
    return response.withdrawal


async def wait_until_finished(clients: Clients, withdrawal_id: str) -> payouts_pb2.Withdrawal:
    return await eventually(
        lambda: get_withdrawal(clients, withdrawal_id),
        lambda found: found.status != payouts_pb2.WITHDRAWAL_STATUS_PENDING,
    )


async def fetch(stack: Stack, sql: str, *args: object) -> list[asyncpg.Record]:
    """The rows of a query on the payouts database."""
    conn = await asyncpg.connect(stack.database_url("payouts"))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def settlement_consumer_idle(stack: Stack) -> bool:
    nc = await operator_nats(stack.nats)
    try:
        info = await nc.jetstream().consumer_info(GIFTS_STREAM, SETTLEMENT_CONSUMER)
        return info.num_pending == 0 and info.num_ack_pending == 0
    finally:
        await nc.drain()


async def dead_letters(stack: Stack) -> list[DeadLetter]:
    nc = await operator_nats(stack.nats)
    try:
        return await list_dead_letters(nc.jetstream())
    finally:
        await nc.close()


async def wait_for_dead_letter(stack: Stack, original_msg_id: str) -> DeadLetter:
    deadline = asyncio.get_running_loop().time() + DEAD_LETTER_WAIT_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        for letter in await dead_letters(stack):
            if letter.original_msg_id == original_msg_id:
                return letter
        await asyncio.sleep(0.2)
    raise AssertionError(f"{original_msg_id} was never dead-lettered")


async def assert_ledger_consistent(stack: Stack) -> None:
    """The payouts ledger, read in one snapshot: every transaction balances; every creator's balance columns
    (available, reserved, pending) equal the sums of its postings; lifetime equals its credits and pending its
    credits still held; the platform accounts mirror credits and payouts."""
    conn = await asyncpg.connect(stack.database_url("payouts"))
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            unbalanced = await conn.fetch(
                "SELECT transaction_id, sum(diamonds_delta) FROM postings GROUP BY transaction_id"
                " HAVING sum(diamonds_delta) <> 0"
            )
            assert unbalanced == []
            mismatched = await conn.fetch(
                """
                WITH posted AS (
                    SELECT split_part(ledger_account_id, ':', 2) AS creator_id,
                           sum(diamonds_delta) FILTER (WHERE ledger_account_id LIKE '%:available') AS available,
                           sum(diamonds_delta) FILTER (WHERE ledger_account_id LIKE '%:reserved') AS reserved,
                           sum(diamonds_delta) FILTER (WHERE ledger_account_id LIKE '%:pending') AS pending
                    FROM postings WHERE ledger_account_id LIKE 'creator:%' GROUP BY 1
                ), credited AS (
                    SELECT creator_id, sum(diamonds) AS lifetime,
                           sum(diamonds) FILTER (WHERE matured_at IS NULL) AS held
                    FROM diamond_credits GROUP BY creator_id
                )
                SELECT b.creator_id
                FROM creator_balances AS b
                FULL JOIN posted AS p USING (creator_id)
                FULL JOIN credited AS c USING (creator_id)
                WHERE coalesce(b.available_diamonds, 0) <> coalesce(p.available, 0)
                   OR coalesce(b.reserved_diamonds, 0) <> coalesce(p.reserved, 0)
                   OR coalesce(b.lifetime_diamonds, 0) <> coalesce(c.lifetime, 0)
                   OR coalesce(b.pending_diamonds, 0) <> coalesce(p.pending, 0)
                   OR coalesce(b.pending_diamonds, 0) <> coalesce(c.held, 0)
                """
            )
            assert mismatched == []
            system = dict(
                await conn.fetch(
                    "SELECT ledger_account_id, sum(diamonds_delta) FROM postings"
                    " WHERE ledger_account_id LIKE 'system:%' GROUP BY ledger_account_id"
                )
            )
            credited = await conn.fetchval("SELECT coalesce(sum(diamonds), 0) FROM diamond_credits")
            paid = await conn.fetchval("SELECT coalesce(sum(diamonds), 0) FROM withdrawals WHERE status = 'paid'")
            reserved = await conn.fetchval(  # still reserved: waiting, or with a provider (submitted)
                "SELECT coalesce(sum(diamonds), 0) FROM withdrawals WHERE status IN ('pending', 'submitted')"
            )
            total_reserved = await conn.fetchval("SELECT coalesce(sum(reserved_diamonds), 0) FROM creator_balances")
            assert system.get("system:gift_settlement", 0) == -credited
            assert system.get("system:paid_out", 0) == paid
            assert total_reserved == reserved
    finally:
        await conn.close()
