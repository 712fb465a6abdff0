"""The money identities, checked straight in each service's database after concurrent and faulty runs.

Wallet: every transaction balances; each user bucket (paid, bonus) equals its postings and is never negative except
a frozen account's chargeback debt; coins issued (sales + promotions, net of reversals) = user balances + coins spent.
Across services: every completed gift was paid by exactly one wallet spend of the same coins, and settled exactly
once; per creator and rate version its diamonds are floor(total coins × rate). Payouts: every transaction balances;
creator balances (pending, available, reserved) equal their postings and are never negative."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from tests.stack import Stack


async def wallet_violations(conn: asyncpg.Connection) -> list[str]:
    problems: list[str] = []
    unbalanced = await conn.fetch(
        "SELECT transaction_id, sum(coins_delta) AS total FROM postings"
        " GROUP BY transaction_id HAVING sum(coins_delta) <> 0"
    )
    problems += [f"wallet transaction {r['transaction_id']} sums to {r['total']}" for r in unbalanced]
    # User ledger accounts are both buckets, '<account_id>' (paid) and '<account_id>:bonus'. Only a paid bucket
    # may be negative, and only as the debt of a reversed purchase on a frozen account.
    drifted = await conn.fetch(
        "SELECT l.ledger_account_id, l.coins, coalesce(sum(p.coins_delta), 0) AS posted"
        " FROM ledger_accounts AS l LEFT JOIN postings AS p USING (ledger_account_id)"
        " WHERE l.kind = 'user' GROUP BY l.ledger_account_id, l.coins"
        " HAVING l.coins <> coalesce(sum(p.coins_delta), 0) OR (l.coins < 0 AND NOT EXISTS ("
        "   SELECT 1 FROM accounts AS a JOIN purchases AS b USING (account_id)"
        "   JOIN purchase_reversals AS r USING (purchase_id)"
        "   WHERE a.account_id = l.ledger_account_id AND a.status = 'frozen'))"
    )
    problems += [
        f"wallet balance of {r['ledger_account_id']} is {r['coins']}, postings say {r['posted']}" for r in drifted
    ]
    # Issued = sales + promotions postings, net of reversals (which post back to them); giveaways move coins
    # between users only, so they leave both sides alone.
    totals = await conn.fetchrow(
        "SELECT"
        " -coalesce(sum(coins_delta)"
        "   FILTER (WHERE ledger_account_id IN ('system:sales', 'system:promotions')), 0) AS issued,"
        " coalesce(sum(coins_delta) FILTER (WHERE ledger_account_id = 'system:spent'), 0) AS spent"
        " FROM postings"
    )
    held = await conn.fetchval("SELECT coalesce(sum(coins), 0) FROM ledger_accounts WHERE kind = 'user'")
    if totals["issued"] != held + totals["spent"]:
        problems.append(f"coins issued {totals['issued']} != balances {held} + spent {totals['spent']}")
    return problems


async def gift_payment_violations(wallet: asyncpg.Connection, gifts: asyncpg.Connection) -> list[str]:
    """Each completed gift ↔ exactly one wallet spend with reference gift:<id> of the same coins."""
    completed = {
        r["gift_transaction_id"]: r["coins"]
        for r in await gifts.fetch(
            "SELECT gift_transaction_id, coins FROM gift_transactions WHERE status = 'completed'"
        )
    }
    spends = await wallet.fetch(
        "SELECT substr(t.reference, 6) AS gift_transaction_id, count(DISTINCT t.transaction_id) AS spends,"
        " -sum(p.coins_delta) AS coins"
        " FROM transactions AS t JOIN postings AS p"  # both buckets of the sender: a spend is paid + bonus coins
        "   ON p.transaction_id = t.transaction_id"
        "   AND p.ledger_account_id IN (t.account_id, t.account_id || ':bonus')"
        " WHERE t.kind = 'spend' AND t.reference LIKE 'gift:%' GROUP BY t.reference"
    )
    paid = {r["gift_transaction_id"]: (r["spends"], r["coins"]) for r in spends}
    problems = [
        f"gift {gid} ({coins} coins) has wallet spends {paid.get(gid)}"
        for gid, coins in completed.items()
        if paid.get(gid) != (1, coins)
    ]
    # A spend without a completed gift is allowed only while its gift is still pending (recovery finishes it).
    pending = {
        r["gift_transaction_id"]
        for r in await gifts.fetch("SELECT gift_transaction_id FROM gift_transactions WHERE status = 'pending'")
    }
    problems += [
        f"wallet spend for gift {gid} has no completed gift"
        for gid in paid
        if gid not in completed and gid not in pending
    ]
    return problems


async def settlement_violations(gifts: asyncpg.Connection, payouts: asyncpg.Connection) -> list[str]:
    """Every completed gift settled exactly once, for its coins. Per creator and rate version the credits sum to
    floor(total coins × rate) and the carried remainder is the rest (fractions are carried from gift to gift, so a
    single gift may round either way)."""
    completed = {
        r["gift_transaction_id"]: r["coins"]
        for r in await gifts.fetch(
            "SELECT gift_transaction_id, coins FROM gift_transactions WHERE status = 'completed'"
        )
    }
    credits = await payouts.fetch(
        "SELECT gift_transaction_id, count(*) AS credits, sum(coins) AS coins FROM diamond_credits"
        " WHERE gift_transaction_id = ANY($1::text[]) GROUP BY gift_transaction_id",
        list(completed),
    )
    settled = {r["gift_transaction_id"]: r for r in credits}
    problems = []
    for gift_id, coins in completed.items():
        credit = settled.get(gift_id)
        if credit is None:
            problems.append(f"gift {gift_id} never settled")
        elif credit["credits"] != 1 or credit["coins"] != coins:
            problems.append(f"gift {gift_id} settled {credit['credits']} times for {credit['coins']} coins")
    rounded = await payouts.fetch(
        "SELECT c.creator_id, c.rate_version, sum(c.coins) AS coins, sum(c.diamonds) AS diamonds,"
        " div(sum(c.coins) * min(r.numerator), min(r.denominator)) AS exact,"
        " mod(sum(c.coins) * min(r.numerator), min(r.denominator)) AS rest, min(s.remainder) AS carried"
        " FROM diamond_credits AS c JOIN settlement_rates AS r ON r.version = c.rate_version"
        " LEFT JOIN settlement_carries AS s ON (s.creator_id, s.rate_version) = (c.creator_id, c.rate_version)"
        " GROUP BY c.creator_id, c.rate_version"
        " HAVING sum(c.diamonds) <> div(sum(c.coins) * min(r.numerator), min(r.denominator))"
        "   OR coalesce(min(s.remainder), 0) <> mod(sum(c.coins) * min(r.numerator), min(r.denominator))"
    )
    problems += [
        f"creator {r['creator_id']} at rate version {r['rate_version']}: {r['coins']} coins became {r['diamonds']}"
        f" diamonds (exactly {r['exact']}), carrying {r['carried']} (rest {r['rest']})"
        for r in rounded
    ]
    return problems


async def payouts_violations(conn: asyncpg.Connection) -> list[str]:
    unbalanced = await conn.fetch(
        "SELECT transaction_id, sum(diamonds_delta) AS total FROM postings"
        " GROUP BY transaction_id HAVING sum(diamonds_delta) <> 0"
    )
    problems = [f"payouts transaction {r['transaction_id']} sums to {r['total']}" for r in unbalanced]
    # A creator's balance row stands for three ledger accounts: creator:<id>:available, :reserved and :pending.
    drifted = await conn.fetch(
        """
        WITH held AS (
            SELECT 'creator:' || creator_id || ':available' AS ledger_account_id, available_diamonds AS diamonds
            FROM creator_balances
            UNION ALL
            SELECT 'creator:' || creator_id || ':reserved', reserved_diamonds FROM creator_balances
            UNION ALL
            SELECT 'creator:' || creator_id || ':pending', pending_diamonds FROM creator_balances
        ), posted AS (
            SELECT ledger_account_id, sum(diamonds_delta) AS posted FROM postings
            WHERE ledger_account_id LIKE 'creator:%' GROUP BY ledger_account_id
        )
        SELECT ledger_account_id, coalesce(h.diamonds, 0) AS diamonds, coalesce(p.posted, 0) AS posted
        FROM held AS h FULL JOIN posted AS p USING (ledger_account_id)
        WHERE coalesce(h.diamonds, 0) <> coalesce(p.posted, 0) OR h.diamonds < 0
        """
    )
    problems += [
        f"payouts balance of {r['ledger_account_id']} is {r['diamonds']}, postings say {r['posted']}" for r in drifted
    ]
    lifetime = await conn.fetch(
        "SELECT b.creator_id, b.lifetime_diamonds, coalesce(sum(c.diamonds), 0) AS credited"
        " FROM creator_balances AS b LEFT JOIN diamond_credits AS c ON c.creator_id = b.creator_id"
        " GROUP BY b.creator_id, b.lifetime_diamonds HAVING b.lifetime_diamonds <> coalesce(sum(c.diamonds), 0)"
    )
    problems += [
        f"creator {r['creator_id']} lifetime {r['lifetime_diamonds']} != credits {r['credited']}" for r in lifetime
    ]
    # Pending diamonds are exactly those of credits still in their maturity hold.
    unmatured = await conn.fetch(
        "SELECT b.creator_id, b.pending_diamonds, coalesce(sum(c.diamonds), 0) AS held"
        " FROM creator_balances AS b"
        " LEFT JOIN diamond_credits AS c ON c.creator_id = b.creator_id AND c.matured_at IS NULL"
        " GROUP BY b.creator_id, b.pending_diamonds HAVING b.pending_diamonds <> coalesce(sum(c.diamonds), 0)"
    )
    problems += [
        f"creator {r['creator_id']} pending {r['pending_diamonds']} != unmatured credits {r['held']}" for r in unmatured
    ]
    return problems


async def wait_until_settled(stack: Stack, timeout_seconds: float = 30.0) -> None:
    """Waits until the outbox is empty and every completed gift is in the payouts inbox."""
    gifts = await asyncpg.connect(stack.database_url("gifts"))
    payouts = await asyncpg.connect(stack.database_url("payouts"))
    try:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            completed = [
                r["gift_transaction_id"]
                for r in await gifts.fetch(
                    "SELECT gift_transaction_id FROM gift_transactions WHERE status = 'completed'"
                )
            ]
            settled = await payouts.fetchval(
                "SELECT count(*) FROM inbox WHERE gift_transaction_id = ANY($1::text[])", completed
            )
            if settled == len(completed):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"settlement did not catch up: {settled} of {len(completed)} gifts settled")
    finally:
        await gifts.close()
        await payouts.close()


async def all_violations(stack: Stack) -> list[str]:
    await wait_until_settled(stack)
    wallet = await asyncpg.connect(stack.database_url("wallet"))
    gifts = await asyncpg.connect(stack.database_url("gifts"))
    payouts = await asyncpg.connect(stack.database_url("payouts"))
    try:
        return [
            *await wallet_violations(wallet),
            *await gift_payment_violations(wallet, gifts),
            *await settlement_violations(gifts, payouts),
            *await payouts_violations(payouts),
        ]
    finally:
        for conn in (wallet, gifts, payouts):
            await conn.close()
