"""SendGift, a saga around the wallet (like the wallet's own purchases around the payment provider), run in batches:
concurrent SendGift calls join a batch (runtime MicroBatcher), and each step is paid once per batch.

  1. one transaction: claim every request_id of the batch in one statement (replays answered, gifts a crash left
     in flight resumed), check the rules, record the accepted gifts as pending;
  2. one wallet call (SpendCoinsBatch): each gift's spend under request_id "gift:<gift_transaction_id>", the same
     on every attempt, with its own outcome;
  3. one transaction: complete the paid gifts (combo counts decided under the combos' row locks), bump stream
     counters and leaderboards once per row, queue the batch's GiftSents as one GiftSentBatch event (events.py),
     store every response — and fail the gifts the wallet refused for good, storing the refusal.

A crash or a wallet outage between 1 and 3 leaves the gifts pending; a retry with the same request_id or the
recovery pass resumes them at step 2, and the wallet answers a repeated spend with its stored outcome. A batch is one
transaction per step, so a crash loses a whole step of a batch or none of it.

The saga takes SendGift commands and answers GiftReceipts (or the refusal); it keeps each answer with its key through
the Reply it is given (convert.GIFT_SENT: the SendGiftResponse's bytes), inside the same statements as before."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import structlog

from services.gifts import domain, events, ports
from services.gifts.domain import (
    CompletionLocks,
    GiftContext,
    GiftReceipt,
    OutboxRow,
    SendGift,
    SentGift,
    Spend,
    SpendAsk,
    TargetKind,
)
from services.runtime import tracing
from services.runtime.batching import BatchPolicy, MicroBatcher, in_request_id_rounds
from services.runtime.errors import AppError, failed_precondition, request_id_reused, unavailable
from services.runtime.faults import crash_point
from services.runtime.ids import new_id
from services.runtime.requests import Outcome, Reply, StoredRequest, replayed

log = structlog.get_logger()

# What a SendGift call is answered with.
Answer = GiftReceipt | AppError
# The GiftSent outbox rows of gifts completed together at sent_at.
GiftSentRows = Callable[[list[SentGift], datetime], list[OutboxRow]]


class GiftSaga:
    def __init__(
        self,
        store: ports.GiftStore,
        wallet: ports.Wallet,
        policy: BatchPolicy,
        reply: Reply[GiftReceipt],
        on_event_queued: Callable[[], None] = lambda: None,
        *,
        per_gift_events: bool = False,
    ) -> None:
        self._store = store
        self._wallet = wallet
        # How a receipt is kept with its key (and read back for a replay).
        self._reply = reply
        # Wakes the outbox relay so GiftSent goes out at once rather than at its next poll.
        self._on_event_queued = on_event_queued
        # One GiftSent message per gift (the contract's gifts.v1.gift_sent) rather than one GiftSentBatch per batch.
        self._per_gift_events = per_gift_events
        self._batcher: MicroBatcher[SendGift, GiftReceipt] = MicroBatcher("send_gift", self._send_batch, policy)
        # Tracing on only: the traceparent of each SendGift call waiting for its batch, by request_id, so that its
        # gift's outbox row carries the call's trace on to the relay and settlement (one trace per gift).
        self._trace_parents: dict[str, str] = {}

    async def send(self, command: SendGift) -> GiftReceipt:
        traceparent = tracing.current_traceparent()
        if traceparent is None:
            return await self._batcher.submit(command)
        self._trace_parents[command.request_id] = traceparent
        try:
            return await self._batcher.submit(command)
        finally:
            if self._trace_parents.get(command.request_id) == traceparent:
                del self._trace_parents[command.request_id]

    async def _send_batch(self, commands: list[SendGift]) -> list[Answer]:
        return await in_request_id_rounds(commands, self._send_unique)

    async def _send_unique(self, commands: list[SendGift]) -> dict[str, Answer]:
        outcomes, to_pay = await self._record_intents(commands)
        crash_point("gifts.after_gift_recorded")
        outcomes.update(await self.complete(to_pay))
        return outcomes

    async def _record_intents(self, commands: list[SendGift]) -> tuple[dict[str, Answer], list[SentGift]]:
        """Step 1: the outcomes already known (replays, refusals) and the pending gifts to pay. Two round trips: the
        reads the rules need, then one statement that claims every request_id and records the accepted gifts."""
        context = await self._store.read_gift_context(
            _target_ids(commands, TargetKind.STREAM),
            _target_ids(commands, TargetKind.VIDEO),
            sorted({command.gift_id for command in commands}),
            [command.request_id for command in commands],
        )
        outcomes, to_pay = _answer_from_earlier_gifts(commands, context.gifts_without_key)
        commands = [command for command in commands if command.request_id not in context.gifts_without_key]
        new_gifts, refusals = _check_new_gifts(commands, context)
        claims = [command.key for command in commands]
        decided = [Outcome(rid, error=refusal) for rid, refusal in refusals.items()]
        decided += [Outcome(g.request_id, resource_id=g.gift_transaction_id) for g in new_gifts]
        claimed = await self._store.claim_and_record_pending_gifts(claims, decided, new_gifts)
        outcomes.update({rid: refusal for rid, refusal in refusals.items() if rid in claimed})
        in_flight: list[str] = []
        for request_id, stored in (await self._store.earlier_outcomes(claims, claimed)).items():
            if isinstance(stored, StoredRequest) and stored.in_flight:
                assert stored.resource_id is not None, f"SendGift {request_id} in flight without a gift"
                in_flight.append(stored.resource_id)
            else:
                outcomes[request_id] = self._replayed(stored)
        if in_flight:
            to_pay += (await self._store.get_gift_transactions(in_flight)).values()
        # Gifts sent earlier (resumed) before the new ones, so combos and live feeds count them first.
        return outcomes, [*to_pay, *(gift for gift in new_gifts if gift.request_id in claimed)]

    async def complete(self, gifts: list[SentGift]) -> dict[str, Answer]:
        """Resumes gifts wherever they stand and returns each one's outcome by request_id. Safe to run concurrently
        with itself (a retry, another batch, the recovery pass): the wallet and the gift row locks decide once."""
        pending = [gift for gift in gifts if gift.status is domain.GiftStatus.PENDING]
        outcomes: dict[str, Answer] = {}
        if pending:
            payments = await self._pay(pending)
            crash_point("gifts.after_wallet_debit")
            outcomes = await self._settle(list(zip(pending, payments, strict=True)))
        # Finished earlier, or concurrently by someone else: answered from what that left behind.
        finished_elsewhere = [gift.request_id for gift in gifts if gift.request_id not in outcomes]
        if finished_elsewhere:
            stored = await self._store.load_outcomes(finished_elsewhere)
            outcomes.update({request_id: self._replayed(stored[request_id]) for request_id in finished_elsewhere})
        return outcomes

    async def _pay(self, gifts: list[SentGift]) -> list[Spend | AppError]:
        """Step 2: one wallet call. An unknown outcome (the wallet down, a deadline) is an error for every gift."""
        asks = [
            SpendAsk(spend_key, gift.sender_id, gift.coins, spend_key)
            for gift in gifts
            for spend_key in [domain.wallet_spend_request_id(gift.gift_transaction_id)]
        ]
        try:
            return await self._wallet.spend_batch(asks)
        except AppError as unknown:
            return [unknown] * len(gifts)

    async def _settle(self, payments: list[tuple[SentGift, Spend | AppError]]) -> dict[str, Answer]:
        """Step 3: completes paid gifts and fails refused ones in one transaction. Gifts whose payment is still
        unknown stay pending and get WALLET_UNAVAILABLE (retry with the same request_id)."""
        outcomes: dict[str, Answer] = {}
        decided: list[tuple[SentGift, Spend | AppError]] = []
        for gift, payment in payments:
            if isinstance(payment, AppError) and not domain.is_final_wallet_refusal(payment):
                outcomes[gift.request_id] = _payment_unknown(gift, payment)
            else:
                decided.append((gift, payment))
        if not decided:
            return outcomes
        async with self._store.transaction() as tx:
            # Locked first (in id order): a gift a concurrent retry or recovery pass finished meanwhile drops out.
            locks = await tx.lock_pending_gifts(
                [gift.gift_transaction_id for gift, _ in decided],
                [gift.stream_id for gift, payment in decided if isinstance(payment, Spend) and gift.stream_id],
            )
            decided = [(gift, payment) for gift, payment in decided if gift.gift_transaction_id in locks.pending]
            paid = [(gift, payment) for gift, payment in decided if isinstance(payment, Spend)]
            refused = [(gift, payment) for gift, payment in decided if isinstance(payment, AppError)]
            settled = await _complete_paid_gifts(tx, paid, refused, self._gift_sent_rows, locks, self._reply)
        if paid:
            self._on_event_queued()
        return outcomes | settled

    async def recover_pending(self, older_than_seconds: float, batch_size: int) -> int:
        """Finishes gifts a crash or a wallet outage left pending, one batch per pass. Returns how many it resolved
        (completed or finally refused): a gift still waiting on the wallet does not count, so a pass that met an
        outage never asks to run again at once."""
        gift_transaction_ids = await self._store.stale_pending_gifts(older_than_seconds, batch_size)
        resolved = 0
        if gift_transaction_ids:
            gifts = list((await self._store.get_gift_transactions(gift_transaction_ids)).values())
            try:
                outcomes = await self.complete(gifts)
            except Exception:
                # One broken gift must not hold back the others pass after pass: each on its own, then.
                log.exception("recovery_batch_failed", gifts=len(gifts))
                outcomes = await self._complete_one_by_one(gifts)
            resolved = sum(1 for o in outcomes.values() if not isinstance(o, AppError) or o.is_outcome)
            log.info("recovery_pass", kind="gift", resumed=len(gift_transaction_ids), unresolved=len(gifts) - resolved)
        return resolved

    async def _complete_one_by_one(self, gifts: list[SentGift]) -> dict[str, Answer]:
        outcomes: dict[str, Answer] = {}
        for gift in gifts:
            try:
                outcomes.update(await self.complete([gift]))
            except Exception:
                log.exception("recovery_failed", kind="gift", gift_transaction_id=gift.gift_transaction_id)
        return outcomes

    def _gift_sent_rows(self, gifts: list[SentGift], sent_at: datetime) -> list[OutboxRow]:
        return events.gift_sent_rows(gifts, sent_at, self._trace_parents, per_gift=self._per_gift_events)

    def _replayed(self, stored: StoredRequest | AppError) -> Answer:
        if isinstance(stored, AppError):
            return stored
        try:
            return replayed(stored, self._reply)
        except AppError as error:
            return error


def _target_ids(commands: list[SendGift], kind: TargetKind) -> list[str]:
    return sorted({target_id for target_kind, target_id in (c.target for c in commands) if target_kind is kind})


def _check_new_gifts(commands: list[SendGift], context: GiftContext) -> tuple[list[SentGift], dict[str, AppError]]:
    """The rules for each new request: a pending gift to record, or a refusal."""
    gifts: list[SentGift] = []
    refusals: dict[str, AppError] = {}
    for command in commands:
        catalog_gift = context.catalog.get(command.gift_id)
        kind, target_id = command.target
        try:
            if kind is TargetKind.VIDEO:
                target: domain.LiveStream | domain.Video
                target, gift = domain.require_giftable_video(
                    context.videos.get(target_id), target_id, catalog_gift, command.gift_id, command.sender_id
                )
            else:
                target, gift = domain.require_giftable(
                    context.streams.get(target_id), target_id, catalog_gift, command.gift_id, command.sender_id
                )
        except AppError as refusal:
            refusals[command.request_id] = refusal
            continue
        gifts.append(pending_gift(command, target, gift))
    return gifts, refusals


def _answer_from_earlier_gifts(
    commands: list[SendGift], earlier: dict[str, SentGift]
) -> tuple[dict[str, Answer], list[SentGift]]:
    """Requests whose gift outlived their idempotency key (a retry days later) are answered from the gift itself —
    a pending one is resumed — rather than recorded again (and never as a failure of the whole batch). The stored
    refusal is gone with the key: a refused gift answers with its reason under FAILED_PRECONDITION."""
    outcomes: dict[str, Answer] = {}
    to_resume: list[SentGift] = []
    for command in commands:
        gift = earlier.get(command.request_id)
        if gift is None:
            continue
        same = (gift.sender_id, gift.target, gift.gift_id, gift.quantity) == (
            command.sender_id,
            command.target,
            command.gift_id,
            command.quantity,
        )
        if not same:
            outcomes[command.request_id] = request_id_reused()
        elif gift.status is domain.GiftStatus.PENDING:
            to_resume.append(gift)
        else:
            outcomes[command.request_id] = _outcome_of_finished_gift(gift)
    return outcomes, to_resume


def _outcome_of_finished_gift(gift: SentGift) -> Answer:
    if gift.status is domain.GiftStatus.FAILED:
        return failed_precondition(gift.failure_reason or "GIFT_FAILED", "this gift was refused when first sent")
    return gift.receipt()


def pending_gift(command: SendGift, target: domain.LiveStream | domain.Video, gift: domain.CatalogGift) -> SentGift:
    return SentGift(
        gift_transaction_id=new_id("gtx"),
        request_id=command.request_id,
        sender_id=command.sender_id,
        recipient_id=target.creator_id,
        stream_id=target.stream_id if isinstance(target, domain.LiveStream) else None,
        video_id=target.video_id if isinstance(target, domain.Video) else None,
        gift_id=gift.gift_id,
        quantity=command.quantity,
        coin_price=gift.coin_price,
        coins=domain.gift_coins(gift.coin_price, command.quantity),
        status=domain.GiftStatus.PENDING,
        wallet_transaction_id=None,
        sender_balance_coins=None,
    )


async def _complete_paid_gifts(
    tx: ports.Transaction,
    paid: list[tuple[SentGift, Spend]],
    refused: list[tuple[SentGift, AppError]],
    gift_sent_rows: GiftSentRows,
    locks: CompletionLocks,
    reply: Reply[GiftReceipt],
) -> dict[str, Answer]:
    """Completes the paid gifts and fails the refused ones (all locked pending by the caller). Locks in one order
    in every batch (streams, gifts, matches; combos, leaderboards, stream and video counters, match sides, goals),
    so completions never deadlock; each hot row is written once per batch. A transaction that holds a match's share
    lock holds its gifts already, so none waits for a gift while a finisher waits for it."""
    matches = await _lock_active_matches(tx, paid, locks)
    keys = [
        domain.ComboKey(kind.value, target_id, gift.sender_id, gift.gift_id)
        for gift, _ in paid
        for kind, target_id in [gift.target]
    ]
    # (Refusals only: nothing is stamped, so any time will do.)
    combos, sent_at = await tx.lock_combos(keys) if paid else ({}, datetime.now(UTC))
    # Stamped (by the database's clock) after the combo locks, so the gifts of one combo are stamped in the order
    # they are counted, and after the matches' share locks, so the match a gift counts in is decided by its stamp.
    combo_counts, new_combos = domain.assign_combo_counts(keys, combos, sent_at)
    gifts = [
        completed_gift(gift, spend, combo_count) for (gift, spend), combo_count in zip(paid, combo_counts, strict=True)
    ]
    outcomes: dict[str, Answer] = {gift.request_id: gift.receipt() for gift in gifts}
    outcomes.update({gift.request_id: refusal for gift, refusal in refused})
    await tx.finish_gifts(
        gifts,
        sent_at,
        new_combos,
        [(gift.gift_transaction_id, refusal.reason) for gift, refusal in refused],
        [_kept(request_id, outcome, reply) for request_id, outcome in outcomes.items()],
    )
    if gifts:
        await _count_gifts(tx, gifts, sent_at, gift_sent_rows, matches, locks.goals)
    return outcomes


async def _lock_active_matches(
    tx: ports.Transaction, paid: list[tuple[SentGift, Spend]], locks: CompletionLocks
) -> dict[str, str]:
    """The active match of each stream the paid gifts go to (by stream_id), locked so that none finishes before
    this batch commits. No statement when none of the streams was ever in a match."""
    last = {
        gift.stream_id: locks.last_matches[gift.stream_id] for gift, _ in paid if gift.stream_id in locks.last_matches
    }
    if not last:
        return {}
    active = await tx.lock_active_matches(list(last.values()))
    return {stream_id: match_id for stream_id, match_id in last.items() if match_id in active}


async def _count_gifts(
    tx: ports.Transaction,
    gifts: list[SentGift],
    sent_at: datetime,
    gift_sent_rows: GiftSentRows,
    matches: Mapping[str, str],
    goals: Mapping[str, str],
) -> None:
    """The counters completed gifts feed (leaderboards, stream and video summaries, match scores, goals) and their
    events. The outbox rows come after the counters: their ids are taken under those rows' locks, so one stream's
    events are numbered — and published by the relay — in the order their gifts commit, which is the order live
    feeds show. Each GiftSent keeps the trace of the call that sent its gift (none for one the recovery pass
    finished)."""
    counted = [domain.CountedGift(g.stream_id, g.recipient_id, g.sender_id, g.coins, g.video_id) for g in gifts]
    await tx.add_to_gifter_totals(domain.leaderboard_increments(counted, sent_at))
    gifters = {kind: domain.gifter_increments(counted, kind) for kind in domain.TargetKind}
    totals = {kind: domain.total_increments(counted, kind) for kind in domain.TargetKind}
    for kind in domain.TargetKind:
        if totals[kind]:
            await tx.add_to_counters(kind, gifters[kind], totals[kind])
    outbox = gift_sent_rows(gifts, sent_at)
    stream = domain.TargetKind.STREAM
    outbox += await _count_in_matches(tx, gifters[stream], totals[stream], sent_at, matches)
    outbox += await _count_in_goals(tx, totals[stream], sent_at, goals)
    await tx.insert_outbox_events(outbox)


async def _count_in_matches(
    tx: ports.Transaction,
    stream_gifters: list[tuple[str, str, int]],
    stream_totals: list[tuple[str, int, int]],
    sent_at: datetime,
    matches: Mapping[str, str],
) -> list[OutboxRow]:
    """Adds the batch's coins per stream (and per stream and sender) to the scores of their streams' matches (kept
    here, never recounted on read) and returns one MatchUpdated per match counted in. Nothing to do — no statement —
    for streams in no match."""
    scored = [(stream_id, coins) for stream_id, coins, _ in stream_totals if stream_id in matches]
    if not scored:
        return []
    updated = await tx.add_to_match_scores(
        sorted({matches[stream_id] for stream_id, _ in scored}),
        scored,
        [(stream_id, sender_id, coins) for stream_id, sender_id, coins in stream_gifters if stream_id in matches],
        sent_at,
    )
    return [events.match_updated(match) for match in updated]


async def _count_in_goals(
    tx: ports.Transaction, stream_totals: list[tuple[str, int, int]], sent_at: datetime, goals: Mapping[str, str]
) -> list[OutboxRow]:
    """Adds the batch's coins per stream to their open goals and returns a GoalUpdated per goal, and a GoalReached for
    each goal these gifts first brought to its target."""
    increments = [(goals[stream_id], coins) for stream_id, coins, _ in stream_totals if stream_id in goals]
    if not increments:
        return []
    rows = []
    for goal, added in await tx.add_to_goals(increments, sent_at):
        rows.append(events.goal_updated(goal))
        if domain.goal_just_reached(goal, added):
            rows.append(events.goal_reached(goal))
    return rows


def _kept(request_id: str, answer: Answer, reply: Reply[GiftReceipt]) -> Outcome:
    """What a key keeps of its answer: the refusal, or the receipt as its reply's message."""
    if isinstance(answer, AppError):
        return Outcome(request_id, error=answer)
    return Outcome(request_id, response=reply.to_message(answer))


def _payment_unknown(gift: SentGift, error: AppError) -> AppError:
    if error.reason != "WALLET_UNAVAILABLE":  # a per-spend answer we cannot call final: worth a look
        log.warning("wallet_spend_unresolved", gift_transaction_id=gift.gift_transaction_id, reason=error.reason)
    return unavailable("WALLET_UNAVAILABLE", "the wallet did not answer; retry with the same request_id")


def completed_gift(pending: SentGift, spend: Spend, combo_count: int) -> SentGift:
    assert spend.balance_coins >= 0, f"wallet returned a negative balance for {pending.gift_transaction_id}"
    paid_coins, bonus_coins = domain.payment_split(pending.coins, spend.paid_coins, spend.bonus_coins)
    return dataclasses.replace(
        pending,
        status=domain.GiftStatus.COMPLETED,
        wallet_transaction_id=spend.wallet_transaction_id,
        sender_balance_coins=spend.balance_coins,
        paid_coins=paid_coins,
        bonus_coins=bonus_coins,
        combo_count=combo_count,
    )
