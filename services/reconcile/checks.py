"""The money identities, each a read-only check straight in the services' databases.

Wallet: every transaction balances; each user bucket (paid, bonus) equals its postings and is never negative except
a frozen account's chargeback debt; coins issued (sales + promotions, net of reversals) = user balances + coins spent.
Across services: every completed gift was paid by exactly one wallet spend of the same coins, and settled exactly
once (once the settlement lag has passed, unless its event was dead-lettered); every diamond credit has its completed
gift (a forged or replayed GiftSent credits diamonds nobody paid for); per creator and rate version the diamonds are
floor(total coins × rate) with the rest carried. Payouts: every transaction balances; creator balances (pending,
available, reserved) equal their postings and are never negative; per creator, pending + available + reserved +
withdrawn = credited. Work: no gift, purchase or withdrawal pending longer than a threshold.

A check compares what the ledgers say with each other; it never writes. Most comparisons run in SQL (a HAVING over
the whole table), so a check reads only its discrepancies."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Discrepancy:
    # which identity: wallet_ledger, wallet_funding, clawback, gift_payment, settlement, credit_without_gift,
    # payouts_ledger, stuck_work
    check: str
    subject: str  # the transaction, account, gift or creator it concerns
    detail: str


@dataclass(frozen=True)
class Thresholds:
    # A completed gift younger than this may still be on its way to payouts (outbox, JetStream, settlement batch); a
    # credit younger than this may be of a gift that completed after gifts' snapshot was read.
    settlement_grace_seconds: float = 60.0
    # Pending work older than this is stuck: recovery passes and workers should have finished it long before.
    stuck_after_seconds: float = 3600.0


# Completed gifts by id: their coins, and whether they finished within the settlement grace.
CompletedGifts = dict[str, tuple[int, bool]]


# -- wallet ------------------------------------------------------------------------------------------------------


async def wallet_ledger(wallet: asyncpg.Connection) -> list[Discrepancy]:
    found = [
        Discrepancy("wallet_ledger", r["transaction_id"], f"wallet transaction sums to {r['total']}")
        for r in await wallet.fetch(
            "SELECT transaction_id, sum(coins_delta) AS total FROM postings"
            " GROUP BY transaction_id HAVING sum(coins_delta) <> 0"
        )
    ]
    # User ledger accounts are both buckets, '<account_id>' (paid) and '<account_id>:bonus'. Only a paid bucket
    # may be negative, and only as the debt of a reversed purchase on a frozen account.
    drifted = await wallet.fetch(
        "SELECT l.ledger_account_id, l.coins, coalesce(sum(p.coins_delta), 0) AS posted"
        " FROM ledger_accounts AS l LEFT JOIN postings AS p USING (ledger_account_id)"
        " WHERE l.kind = 'user' GROUP BY l.ledger_account_id, l.coins"
        " HAVING l.coins <> coalesce(sum(p.coins_delta), 0) OR (l.coins < 0 AND NOT EXISTS ("
        "   SELECT 1 FROM accounts AS a JOIN purchases AS b USING (account_id)"
        "   JOIN purchase_reversals AS r USING (purchase_id)"
        "   WHERE a.account_id = l.ledger_account_id AND a.status = 'frozen'))"
    )
    found += [
        Discrepancy("wallet_ledger", r["ledger_account_id"], f"balance is {r['coins']}, postings say {r['posted']}")
        for r in drifted
    ]
    # Issued = sales + promotions postings, net of reversals (which post back to them); giveaways move coins
    # between users only, so they leave both sides alone.
    totals = await wallet.fetchrow(
        "SELECT"
        " -coalesce(sum(coins_delta)"
        "   FILTER (WHERE ledger_account_id IN ('system:sales', 'system:promotions')), 0) AS issued,"
        " coalesce(sum(coins_delta) FILTER (WHERE ledger_account_id = 'system:spent'), 0) AS spent"
        " FROM postings"
    )
    assert totals is not None  # an aggregate without GROUP BY returns exactly one row
    held = await wallet.fetchval("SELECT coalesce(sum(coins), 0) FROM ledger_accounts WHERE kind = 'user'")
    if totals["issued"] != held + totals["spent"]:
        found.append(
            Discrepancy(
                "wallet_ledger",
                "coins issued",
                f"{totals['issued']} issued != {held} in balances + {totals['spent']} spent",
            )
        )
    return found


async def wallet_funding(wallet: asyncpg.Connection) -> list[Discrepancy]:
    """Funding attribution (services/wallet/funding.py): every bucket's unspent lots hold max(balance, 0) coins;
    every spend and giveaway since attribution began drew from lots exactly the coins it took; every purchase
    completed since then = its lots + its uses (giveaway transfers aside), paid and bonus coins alike; and reversals
    never trace more than a use's coins, never another purchase's, never more than the purchase."""
    found = [
        Discrepancy("wallet_funding", r["ledger_account_id"], f"balance is {r['coins']}, its lots hold {r['in_lots']}")
        for r in await wallet.fetch(
            "SELECT l.ledger_account_id, l.coins, coalesce(sum(c.coins), 0) AS in_lots"
            " FROM ledger_accounts AS l LEFT JOIN coin_lots AS c USING (ledger_account_id)"
            " WHERE l.kind = 'user' GROUP BY l.ledger_account_id, l.coins"
            " HAVING coalesce(sum(c.coins), 0) <> greatest(l.coins, 0)"
        )
    ]
    found += [
        Discrepancy("wallet_funding", r["transaction_id"], f"took {r['taken']} coins, drew {r['drawn']} from lots")
        for r in await wallet.fetch(
            "WITH taken AS ("
            "  SELECT t.transaction_id, -sum(p.coins_delta) AS coins FROM transactions AS t"
            "  JOIN postings AS p ON p.transaction_id = t.transaction_id"
            "    AND p.ledger_account_id IN (t.account_id, t.account_id || ':bonus')"
            "  WHERE t.kind IN ('spend', 'giveaway')"
            "    AND t.created_at >= (SELECT started_at FROM funding_attribution)"
            "  GROUP BY t.transaction_id"
            "), drawn AS ("
            "  SELECT transaction_id, sum(coins) AS coins FROM coin_funding"
            "  WHERE used_for IN ('spend', 'giveaway') GROUP BY transaction_id"
            ")"
            " SELECT transaction_id, coalesce(taken.coins, 0) AS taken, coalesce(drawn.coins, 0) AS drawn"
            " FROM taken FULL JOIN drawn USING (transaction_id)"
            " WHERE coalesce(taken.coins, 0) <> coalesce(drawn.coins, 0)"
        )
    ]
    found += [
        Discrepancy(
            "wallet_funding",
            r["purchase_id"],
            f"{r['coins']}+{r['bonus_coins']} coins, lots and uses account for {r['paid']}+{r['bonus']}",
        )
        for r in await wallet.fetch(
            "WITH bought AS ("
            "  SELECT p.purchase_id, p.coins, p.bonus_coins FROM purchases AS p"
            "  JOIN transactions AS t ON t.transaction_id = p.transaction_id"
            "  WHERE p.status = 'completed' AND t.created_at >= (SELECT started_at FROM funding_attribution)"
            "), found AS ("
            "  SELECT purchase_id, ledger_account_id, coins FROM coin_lots WHERE purchase_id IS NOT NULL"
            "  UNION ALL"
            "  SELECT purchase_id, ledger_account_id, coins FROM coin_funding"
            "  WHERE purchase_id IS NOT NULL AND used_for <> 'giveaway'"
            "), totals AS ("
            "  SELECT purchase_id,"
            "    coalesce(sum(coins) FILTER (WHERE ledger_account_id NOT LIKE '%:bonus'), 0) AS paid,"
            "    coalesce(sum(coins) FILTER (WHERE ledger_account_id LIKE '%:bonus'), 0) AS bonus"
            "  FROM found GROUP BY purchase_id"
            ")"
            " SELECT b.purchase_id, b.coins, b.bonus_coins, coalesce(t.paid, 0) AS paid, coalesce(t.bonus, 0) AS bonus"
            " FROM bought AS b LEFT JOIN totals AS t USING (purchase_id)"
            " WHERE b.coins <> coalesce(t.paid, 0) OR b.bonus_coins <> coalesce(t.bonus, 0)"
        )
    ]
    found += [
        Discrepancy("wallet_funding", str(r["subject"]), r["detail"])
        for r in await wallet.fetch(
            "SELECT a.funding_id::text AS subject,"
            " 'reversed ' || sum(a.coins) || ' of ' || f.coins || ' coins' AS detail"
            " FROM reversal_allocations AS a JOIN coin_funding AS f USING (funding_id)"
            " GROUP BY a.funding_id, f.coins HAVING sum(a.coins) > f.coins"
            " UNION ALL"
            " SELECT a.transaction_id, 'traced to funding row ' || a.funding_id || ' of another purchase'"
            " FROM reversal_allocations AS a JOIN coin_funding AS f USING (funding_id)"
            " JOIN purchase_reversals AS r ON r.transaction_id = a.transaction_id"
            " WHERE f.purchase_id IS DISTINCT FROM r.purchase_id"
            " UNION ALL"
            " SELECT r.purchase_id, 'reversed ' || sum(r.reversed_coins) || ' of ' || p.coins || ' coins'"
            " FROM purchase_reversals AS r JOIN purchases AS p USING (purchase_id)"
            " GROUP BY r.purchase_id, p.coins HAVING sum(r.reversed_coins) > p.coins"
            " UNION ALL"
            " SELECT r.transaction_id, 'clawed back ' || r.clawed_back_coins || ', its gift allocations say '"
            "   || coalesce(sum(a.coins) FILTER (WHERE a.gift_transaction_id IS NOT NULL), 0)"
            " FROM purchase_reversals AS r LEFT JOIN reversal_allocations AS a USING (transaction_id)"
            " GROUP BY r.transaction_id, r.clawed_back_coins"
            " HAVING r.clawed_back_coins <> coalesce(sum(a.coins) FILTER (WHERE a.gift_transaction_id IS NOT NULL), 0)"
        )
    ]
    return found


# -- across services ---------------------------------------------------------------------------------------------


async def gift_payments(
    wallet: asyncpg.Connection, gifts: asyncpg.Connection, completed: CompletedGifts, thresholds: Thresholds
) -> list[Discrepancy]:
    """Each completed gift ↔ exactly one wallet spend with reference gift:<id> of the same coins. The two databases
    are read one after the other, so under traffic a gift may complete, or a spend be made, between the two reads:
    both directions allow the settlement grace (a recent gift without its spend, a recent spend without its gift)."""
    spends = await wallet.fetch(
        "SELECT substr(t.reference, 6) AS gift_transaction_id, count(DISTINCT t.transaction_id) AS spends,"
        " -sum(p.coins_delta) AS coins, max(t.created_at) > now() - make_interval(secs => $1) AS recent"
        " FROM transactions AS t JOIN postings AS p"  # both buckets of the sender: a spend is paid + bonus coins
        "   ON p.transaction_id = t.transaction_id"
        "   AND p.ledger_account_id IN (t.account_id, t.account_id || ':bonus')"
        " WHERE t.kind = 'spend' AND t.reference LIKE 'gift:%' GROUP BY t.reference",
        thresholds.settlement_grace_seconds,
    )
    paid = {r["gift_transaction_id"]: (r["spends"], r["coins"]) for r in spends}
    found = [
        Discrepancy("gift_payment", gift_id, f"{coins} coins, wallet spends (count, coins) {paid.get(gift_id)}")
        for gift_id, (coins, recent) in completed.items()
        if paid.get(gift_id) != (1, coins) and not (recent and gift_id not in paid)
    ]
    # A spend without a completed gift is allowed only while its gift is still pending (recovery finishes it).
    pending = {
        r["gift_transaction_id"]
        for r in await gifts.fetch("SELECT gift_transaction_id FROM gift_transactions WHERE status = 'pending'")
    }
    found += [
        Discrepancy("gift_payment", r["gift_transaction_id"], "wallet spend without a completed gift")
        for r in spends
        if r["gift_transaction_id"] not in completed and r["gift_transaction_id"] not in pending and not r["recent"]
    ]
    return found


async def reversal_clawbacks(
    wallet: asyncpg.Connection, payouts: asyncpg.Connection, thresholds: Thresholds
) -> list[Discrepancy]:
    """Per reversal and gift, the coins the wallet traced to the gift = the coins payouts claws back (once its
    PurchaseReversed has had the settlement grace to arrive), and a clawback whose gift is settled is applied."""
    traced = {
        (r["transaction_id"], r["gift_transaction_id"]): (r["coins"], r["recent"])
        for r in await wallet.fetch(
            "SELECT a.transaction_id, a.gift_transaction_id, sum(a.coins) AS coins,"
            " max(r.created_at) > now() - make_interval(secs => $1) AS recent"
            " FROM reversal_allocations AS a JOIN purchase_reversals AS r USING (transaction_id)"
            " WHERE a.gift_transaction_id IS NOT NULL GROUP BY a.transaction_id, a.gift_transaction_id",
            thresholds.settlement_grace_seconds,
        )
    }
    clawing = {
        (r["reversal_id"], r["gift_transaction_id"]): (r["coins"], r["waiting_though_settled"])
        for r in await payouts.fetch(
            "SELECT c.reversal_id, c.gift_transaction_id, c.coins,"
            " c.applied_at IS NULL AND d.gift_transaction_id IS NOT NULL AS waiting_though_settled"
            " FROM clawbacks AS c LEFT JOIN diamond_credits AS d USING (gift_transaction_id)"
        )
    }
    found = [
        Discrepancy(
            "clawback", f"{reversal}/{gift}", f"the wallet traced {coins} coins, payouts has {clawing.get(key)}"
        )
        for key, (coins, recent) in traced.items()
        for reversal, gift in [key]
        if (clawing[key][0] if key in clawing else None) != coins and not (recent and key not in clawing)
    ]
    found += [
        Discrepancy("clawback", f"{reversal}/{gift}", f"payouts claws back {coins} coins the wallet never traced")
        for (reversal, gift), (coins, _) in clawing.items()
        if (reversal, gift) not in traced
    ]
    found += [
        Discrepancy("clawback", f"{reversal}/{gift}", "its gift is settled but the clawback was never applied")
        for (reversal, gift), (_, waiting) in clawing.items()
        if waiting
    ]
    return found


async def settlement(
    payouts: asyncpg.Connection, completed: CompletedGifts, dead_lettered: frozenset[str] = frozenset()
) -> tuple[list[Discrepancy], int, list[str]]:
    """Every completed gift settled exactly once, for its coins — or still within the settlement grace, or
    dead-lettered (listed for an operator to replay). Per creator and rate version the credits sum to
    floor(total coins × rate) and the carried remainder is the rest (fractions are carried from gift to gift, so a
    single gift may round either way). Also returns how many gifts are still within the grace, and which unsettled
    gifts are dead-lettered."""
    credits = await payouts.fetch(
        "SELECT gift_transaction_id, count(*) AS credits, sum(coins) AS coins FROM diamond_credits"
        " WHERE gift_transaction_id = ANY($1::text[]) GROUP BY gift_transaction_id",
        list(completed),
    )
    settled = {r["gift_transaction_id"]: r for r in credits}
    found: list[Discrepancy] = []
    in_flight = 0
    waiting_for_replay: list[str] = []
    for gift_id, (coins, recent) in completed.items():
        credit = settled.get(gift_id)
        if credit is None:
            if gift_id in dead_lettered:
                waiting_for_replay.append(gift_id)
            elif recent:
                in_flight += 1
            else:
                found.append(Discrepancy("settlement", gift_id, "completed but never settled"))
        elif credit["credits"] != 1 or credit["coins"] != coins:
            found.append(
                Discrepancy(
                    "settlement", gift_id, f"{coins} coins settled {credit['credits']} times for {credit['coins']}"
                )
            )
    # Net of clawbacks (which take back through the same carry): credited − clawed back, per creator and version.
    rounded = await payouts.fetch(
        "WITH moved AS ("
        "  SELECT creator_id, rate_version, coins, diamonds FROM diamond_credits"
        "  UNION ALL"
        "  SELECT creator_id, rate_version, -coins, -diamonds FROM clawbacks WHERE applied_at IS NOT NULL"
        ")"
        " SELECT c.creator_id, c.rate_version, sum(c.coins) AS coins, sum(c.diamonds) AS diamonds,"
        " div(sum(c.coins) * min(r.numerator), min(r.denominator)) AS exact,"
        " mod(sum(c.coins) * min(r.numerator), min(r.denominator)) AS rest, min(s.remainder) AS carried"
        " FROM moved AS c JOIN settlement_rates AS r ON r.version = c.rate_version"
        " LEFT JOIN settlement_carries AS s ON (s.creator_id, s.rate_version) = (c.creator_id, c.rate_version)"
        " GROUP BY c.creator_id, c.rate_version"
        " HAVING sum(c.diamonds) <> div(sum(c.coins) * min(r.numerator), min(r.denominator))"
        "   OR coalesce(min(s.remainder), 0) <> mod(sum(c.coins) * min(r.numerator), min(r.denominator))"
    )
    found += [
        Discrepancy(
            "settlement",
            r["creator_id"],
            f"at rate version {r['rate_version']}: {r['coins']} coins became {r['diamonds']} diamonds"
            f" (exactly {r['exact']}), carrying {r['carried']} (rest {r['rest']})",
        )
        for r in rounded
    ]
    return found, in_flight, sorted(waiting_for_replay)


async def credits_without_gifts(
    gifts: asyncpg.Connection, payouts: asyncpg.Connection, completed: CompletedGifts, thresholds: Thresholds
) -> list[Discrepancy]:
    """Every diamond credit ↔ a completed gift. Settlement credits whatever a GiftSent says, so an event no gift
    completed (forged, replayed from elsewhere, published by a gifts bug) would credit diamonds nobody paid for. Gifts'
    snapshot is read before payouts', so a gift may complete after the one and be credited before the other: a credit
    younger than the settlement grace is not reported yet."""
    credits = await payouts.fetch(
        "SELECT c.gift_transaction_id, c.creator_id, c.coins, c.diamonds FROM diamond_credits AS c"
        " WHERE c.created_at <= now() - make_interval(secs => $2)"
        "   AND NOT EXISTS (SELECT 1 FROM unnest($1::text[]) AS g (id) WHERE g.id = c.gift_transaction_id)"
        " ORDER BY c.created_at, c.gift_transaction_id",
        list(completed),
        thresholds.settlement_grace_seconds,
    )
    if not credits:
        return []
    # Only the discrepancies are looked up: whether gifts knows the gift at all tells a forged event from a bug.
    known = await gifts.fetch(
        "SELECT gift_transaction_id, status FROM gift_transactions WHERE gift_transaction_id = ANY($1::text[])",
        [r["gift_transaction_id"] for r in credits],
    )
    statuses: dict[str, str] = {r["gift_transaction_id"]: r["status"] for r in known}
    return [
        Discrepancy(
            "credit_without_gift",
            r["gift_transaction_id"],
            f"credited {r['diamonds']} diamonds for {r['coins']} coins to creator {r['creator_id']};"
            f" {_gift_status(statuses.get(r['gift_transaction_id']))}",
        )
        for r in credits
    ]


def _gift_status(status: str | None) -> str:
    return "gifts has no such gift" if status is None else f"the gift is {status}"


async def completed_gifts(gifts: asyncpg.Connection, thresholds: Thresholds) -> CompletedGifts:
    """Read once, for the checks against the wallet and against payouts."""
    rows = await gifts.fetch(
        "SELECT gift_transaction_id, coins, finished_at > now() - make_interval(secs => $1) AS recent"
        " FROM gift_transactions WHERE status = 'completed'",
        thresholds.settlement_grace_seconds,
    )
    return {r["gift_transaction_id"]: (r["coins"], bool(r["recent"])) for r in rows}


# -- payouts -----------------------------------------------------------------------------------------------------


async def payouts_ledger(payouts: asyncpg.Connection) -> list[Discrepancy]:
    found = [
        Discrepancy("payouts_ledger", r["transaction_id"], f"payouts transaction sums to {r['total']}")
        for r in await payouts.fetch(
            "SELECT transaction_id, sum(diamonds_delta) AS total FROM postings"
            " GROUP BY transaction_id HAVING sum(diamonds_delta) <> 0"
        )
    ]
    # A creator's balance row stands for four ledger accounts: creator:<id>:available, :reserved, :pending and :debt
    # (whose balance is minus the debt).
    drifted = await payouts.fetch(
        """
        WITH held AS (
            SELECT 'creator:' || creator_id || ':available' AS ledger_account_id, available_diamonds AS diamonds
            FROM creator_balances
            UNION ALL
            SELECT 'creator:' || creator_id || ':reserved', reserved_diamonds FROM creator_balances
            UNION ALL
            SELECT 'creator:' || creator_id || ':pending', pending_diamonds FROM creator_balances
            UNION ALL
            SELECT 'creator:' || creator_id || ':debt', -debt_diamonds FROM creator_balances
        ), posted AS (
            SELECT ledger_account_id, sum(diamonds_delta) AS posted FROM postings
            WHERE ledger_account_id LIKE 'creator:%' GROUP BY ledger_account_id
        )
        SELECT ledger_account_id, coalesce(h.diamonds, 0) AS diamonds, coalesce(p.posted, 0) AS posted
        FROM held AS h FULL JOIN posted AS p USING (ledger_account_id)
        WHERE coalesce(h.diamonds, 0) <> coalesce(p.posted, 0)
           OR (h.diamonds < 0 AND ledger_account_id NOT LIKE '%:debt')
        """
    )
    found += [
        Discrepancy("payouts_ledger", r["ledger_account_id"], f"balance is {r['diamonds']}, postings say {r['posted']}")
        for r in drifted
    ]
    found += await _creator_totals(payouts)
    return found


async def _creator_totals(payouts: asyncpg.Connection) -> list[Discrepancy]:
    """Per creator: lifetime = credits; pending = what clawbacks left of the credits still in their hold; clawed back
    = its clawbacks; credited − clawed back − withdrawn (paid out) − reserved − pending = available − debt; and a
    creator in debt has nothing available (credits repay debt first)."""
    rows = await payouts.fetch(
        """
        WITH credited AS (
            SELECT creator_id, sum(diamonds) AS diamonds,
                   sum(diamonds - held_clawed_back) FILTER (WHERE matured_at IS NULL) AS held
            FROM diamond_credits GROUP BY creator_id
        ), withdrawn AS (
            SELECT creator_id, sum(diamonds) AS diamonds FROM withdrawals WHERE status = 'paid' GROUP BY creator_id
        ), clawed AS (
            SELECT creator_id, sum(diamonds) AS diamonds FROM clawbacks WHERE applied_at IS NOT NULL
            GROUP BY creator_id
        )
        SELECT b.creator_id, b.lifetime_diamonds, b.pending_diamonds, b.available_diamonds, b.reserved_diamonds,
               b.debt_diamonds, b.clawed_back_diamonds, coalesce(k.diamonds, 0) AS clawed,
               coalesce(c.diamonds, 0) AS credited, coalesce(c.held, 0) AS held, coalesce(w.diamonds, 0) AS withdrawn
        FROM creator_balances AS b
        LEFT JOIN credited AS c USING (creator_id) LEFT JOIN withdrawn AS w USING (creator_id)
        LEFT JOIN clawed AS k USING (creator_id)
        WHERE b.lifetime_diamonds <> coalesce(c.diamonds, 0)
           OR b.pending_diamonds <> coalesce(c.held, 0)
           OR b.clawed_back_diamonds <> coalesce(k.diamonds, 0)
           OR coalesce(c.diamonds, 0) - b.clawed_back_diamonds - coalesce(w.diamonds, 0) - b.reserved_diamonds
              - b.pending_diamonds <> b.available_diamonds - b.debt_diamonds
           OR (b.debt_diamonds > 0 AND b.available_diamonds > 0)
        """
    )
    return [
        Discrepancy(
            "payouts_ledger",
            r["creator_id"],
            f"credited {r['credited']} (lifetime {r['lifetime_diamonds']}); pending {r['pending_diamonds']}"
            f" (unmatured credits {r['held']}) + available {r['available_diamonds']}"
            f" + reserved {r['reserved_diamonds']} + withdrawn {r['withdrawn']}; clawed back"
            f" {r['clawed_back_diamonds']} (clawbacks {r['clawed']}), debt {r['debt_diamonds']}",
        )
        for r in rows
    ]


# -- work left pending -------------------------------------------------------------------------------------------


STUCK_WORK = {
    "gift": ("gifts", "SELECT gift_transaction_id AS id, created_at FROM gift_transactions WHERE status = 'pending'"),
    "purchase": ("wallet", "SELECT purchase_id AS id, created_at FROM purchases WHERE status = 'pending'"),
    "withdrawal": ("payouts", "SELECT withdrawal_id AS id, created_at FROM withdrawals WHERE status = 'pending'"),
}


async def stuck_work(connections: dict[str, asyncpg.Connection], thresholds: Thresholds) -> list[Discrepancy]:
    found: list[Discrepancy] = []
    for kind, (database, pending) in STUCK_WORK.items():
        rows = await connections[database].fetch(
            f"SELECT id, created_at FROM ({pending}) AS p"  # noqa: S608 - constant SQL from this module
            " WHERE created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT 1000",
            thresholds.stuck_after_seconds,
        )
        found += [
            Discrepancy("stuck_work", r["id"], f"{kind} pending since {r['created_at'].isoformat()}") for r in rows
        ]
    return found
