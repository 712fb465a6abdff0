"""The largest gift the catalog allows (the dearest price × the largest quantity) goes through the whole path: the
wallet charges it, settlement credits it. The services read one limit (services/runtime/limits.py), so no side can
accept a gift another refuses."""

from __future__ import annotations

import asyncpg
from coinstream.gifts.v1 import gifts_pb2 as g

from services.runtime import limits
from tests.support.clients import ADMIN, Clients, auth, new_id
from tests.support.factories import create_account, wallet_balance
from tests.support.invariants import wait_until_settled
from tests.support.stack import Stack


async def fund_whale(stack: Stack, account_id: str, coins: int) -> None:
    """Coins no package sells at once: a balanced sale written straight into the wallet's ledger (sales → the paid
    bucket) with their lot (of no purchase, as coins from before funding attribution), so every identity holds."""
    conn = await asyncpg.connect(stack.database_url("wallet"))
    transaction_id = new_id("txn")
    try:
        await conn.execute(
            "WITH t AS (INSERT INTO transactions (transaction_id, kind, request_id, account_id, reference)"
            "   VALUES ($1, 'purchase', $1, $2, 'test: whale funding')),"
            " moved AS (UPDATE ledger_accounts SET coins = coins + $3 WHERE ledger_account_id = $2 RETURNING coins),"
            " lot AS (INSERT INTO coin_lots (ledger_account_id, coins, transaction_id) VALUES ($2, $3, $1))"
            " INSERT INTO postings (transaction_id, ledger_account_id, coins_delta, balance_after)"
            " VALUES ($1, 'system:sales', -$3::bigint, NULL), ($1, $2, $3, (SELECT coins FROM moved))",
            transaction_id,
            account_id,
            coins,
        )
    finally:
        await conn.close()


async def test_the_largest_gift_the_catalog_allows_is_charged_and_credited(stack: Stack, clients: Clients) -> None:
    gift = g.Gift(gift_id=new_id("diamond_ring"), name="Diamond ring", coin_price=limits.MAX_GIFT_COIN_PRICE)
    await clients.gifts.UpsertGift(g.UpsertGiftRequest(request_id=new_id("req"), gift=gift), metadata=ADMIN)
    whale, creator_id = await create_account(clients), await create_account(clients, prefix="creator")
    await fund_whale(stack, whale, limits.MAX_GIFT_COINS)
    stream = await clients.gifts.StartLiveStream(
        g.StartLiveStreamRequest(request_id=new_id("live"), creator_id=creator_id, title="whale"),
        metadata=auth(creator_id),
    )
    try:
        sent = await clients.gifts.SendGift(
            g.SendGiftRequest(
                request_id=new_id("gift"),
                sender_id=whale,
                stream_id=stream.stream.stream_id,
                gift_id=gift.gift_id,
                quantity=limits.MAX_GIFT_QUANTITY,
            ),
            metadata=auth(whale),
        )
    finally:
        await clients.gifts.RetireGift(
            g.RetireGiftRequest(request_id=new_id("req"), gift_id=gift.gift_id), metadata=ADMIN
        )
    assert sent.gift.coins == limits.MAX_GIFT_COINS
    assert (await wallet_balance(clients, whale)).coins == 0

    await wait_until_settled(stack)
    payouts = await asyncpg.connect(stack.database_url("payouts"))
    try:
        credit = await payouts.fetchrow(
            "SELECT c.coins, c.diamonds, div(c.coins * r.numerator, r.denominator) AS floor_diamonds"
            " FROM diamond_credits AS c JOIN settlement_rates AS r ON r.version = c.rate_version"
            " WHERE c.gift_transaction_id = $1",
            sent.gift.gift_transaction_id,
        )
    finally:
        await payouts.close()
    assert credit is not None and credit["coins"] == limits.MAX_GIFT_COINS
    # Fractions carry from gift to gift, so one credit is the floor or one more.
    assert credit["diamonds"] - credit["floor_diamonds"] in (0, 1)
