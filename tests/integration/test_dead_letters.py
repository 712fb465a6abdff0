"""Dead letters instead of loss: a GiftSent settlement cannot process goes to the DEAD_LETTERS stream with its reason
and original payload — at once when unreadable, after the bounded deliveries when it fails on its own — and an
operator replays it with `coinstream dead-letters replay ID` once the cause is fixed: credited exactly once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from services.payouts.settlement import DEFAULT_MAX_DELIVERIES
from tests.support.clients import Clients, new_id
from tests.support.payouts import (
    dead_letters,
    earnings,
    eventually,
    gift_sent,
    publish,
    publish_batch,
    publish_raw,
    settlement_consumer_idle,
    wait_for_dead_letter,
    wait_for_lifetime,
)
from tests.support.stack import REPO_ROOT, Stack

# Unreadable and failing GiftSents made up here: on the synthetic stack (tests/conftest.py).
pytestmark = pytest.mark.synthetic_events

# JetStream delivers an unacked event again only after ack_wait: short for the crash test.
SHORT_ACK_WAIT = {"COINSTREAM_PAYOUTS_SETTLEMENT_ACK_WAIT_SECONDS": "2"}


async def coinstream(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COINSTREAM_")}
    env.update(stack.operator_environment())
    command = [sys.executable, "-m", "devstack.cli", *args]
    return await asyncio.to_thread(
        subprocess.run, command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@asynccontextmanager
async def credits_refused_for(stack: Stack, creator_id: str) -> AsyncIterator[None]:
    """A fault that refuses this creator's credits (a constraint violation: not a database outage), removed on exit
    like the fix an operator deploys."""
    conn = await asyncpg.connect(stack.database_url("payouts"))
    constraint = f"test_refuse_{new_id('c').replace('-', '_')}"
    await conn.execute(
        f"ALTER TABLE diamond_credits ADD CONSTRAINT {constraint} CHECK (creator_id <> '{creator_id}') NOT VALID"
    )
    try:
        yield
    finally:
        await conn.execute(f"ALTER TABLE diamond_credits DROP CONSTRAINT {constraint}")
        await conn.close()


async def test_an_unreadable_event_is_dead_lettered_with_its_reason_and_payload(stack: Stack) -> None:
    garbage, message_id = b"\x08\x96\x01 definitely not a GiftSent \xff", new_id("garbage")
    await publish_raw(stack, [garbage], [message_id])
    letter = await wait_for_dead_letter(stack, message_id)
    assert letter.payload == garbage
    assert letter.original_subject == "gifts.v1.gift_sent" and letter.deliveries == 1
    assert letter.reason.startswith("unreadable GiftSent") and letter.gift_transaction_id == ""

    listed = await coinstream(stack, "dead-letters", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert f'"original_msg_id": "{message_id}"' in listed.stdout


async def test_a_gift_that_keeps_failing_is_dead_lettered_then_replayed_once_fixed(
    stack: Stack, clients: Clients
) -> None:
    creator_id, other_creator = new_id("creator"), new_id("creator")
    failing = gift_sent(creator_id, 7)
    async with credits_refused_for(stack, creator_id):
        # The failing gift shares its batches with a healthy one, which settles regardless.
        await publish(stack, [failing, gift_sent(other_creator, 3)])
        await wait_for_lifetime(clients, other_creator, 3)
        letter = await wait_for_dead_letter(stack, failing.gift_transaction_id)
    assert letter.gift_transaction_id == failing.gift_transaction_id
    assert letter.deliveries == DEFAULT_MAX_DELIVERIES and "CheckViolationError" in letter.reason
    assert (await earnings(clients, creator_id)).lifetime_diamonds == 0

    replayed = await coinstream(stack, "dead-letters", "replay", str(letter.sequence))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert (await wait_for_lifetime(clients, creator_id, 7)).lifetime_diamonds == 7
    assert letter.sequence not in {other.sequence for other in await dead_letters(stack)}

    again = await coinstream(stack, "dead-letters", "replay", str(letter.sequence))
    assert again.returncode == 1 and "no dead letter" in again.stderr
    # A replay of an event already settled changes nothing: the inbox holds each gift once.
    await publish(stack, [failing], [new_id("replayed-again")])
    await asyncio.sleep(1.0)
    assert (await earnings(clients, creator_id)).lifetime_diamonds == 7


async def test_a_bad_gift_of_a_batch_is_dead_lettered_alone_and_the_batch_settled_once(
    stack: Stack, clients: Clients
) -> None:
    creator_id, other_creator = new_id("creator"), new_id("creator")
    bad = gift_sent(creator_id, 5)
    bad.coins = 0
    batch = [gift_sent(creator_id, 7), bad, gift_sent(other_creator, 3)]
    await publish_batch(stack, batch, new_id("batch"))
    await wait_for_lifetime(clients, creator_id, 7)
    await wait_for_lifetime(clients, other_creator, 3)
    letter = await wait_for_dead_letter(stack, bad.gift_transaction_id)
    # Kept as the GiftSent it would have been on its own: a replay settles just it.
    assert letter.original_subject == "gifts.v1.gift_sent" and letter.gift_transaction_id == bad.gift_transaction_id
    assert letter.payload == bad.SerializeToString() and letter.reason.startswith("unreadable GiftSent")

    # The same batch again (a republish beyond the duplicate window): the inbox credits nothing twice.
    await publish_batch(stack, batch, new_id("batch-again"))
    assert await eventually(lambda: settlement_consumer_idle(stack), bool)
    assert (await earnings(clients, creator_id)).lifetime_diamonds == 7
    assert (await earnings(clients, other_creator)).lifetime_diamonds == 3


async def test_an_unreadable_batch_is_dead_lettered_whole(stack: Stack) -> None:
    garbage, message_id = b"\x0a\x03\xff\xfe\xfd not a GiftSentBatch", new_id("garbage-batch")
    await publish_raw(stack, [garbage], [message_id], subject="gifts.v1.gift_sent_batch")
    letter = await wait_for_dead_letter(stack, message_id)
    assert letter.payload == garbage and letter.original_subject == "gifts.v1.gift_sent_batch"
    assert letter.reason.startswith("unreadable GiftSentBatch") and letter.gift_transaction_id == ""


async def test_a_gift_of_a_batch_that_keeps_failing_is_dead_lettered_alone_then_replayed(
    stack: Stack, clients: Clients
) -> None:
    creator_id, other_creator = new_id("creator"), new_id("creator")
    failing = gift_sent(creator_id, 11)
    async with credits_refused_for(stack, creator_id):
        await publish_batch(stack, [failing, gift_sent(other_creator, 4)], new_id("batch"))
        await wait_for_lifetime(clients, other_creator, 4)
        letter = await wait_for_dead_letter(stack, failing.gift_transaction_id)
    assert letter.original_subject == "gifts.v1.gift_sent" and letter.deliveries == DEFAULT_MAX_DELIVERIES
    assert (await earnings(clients, creator_id)).lifetime_diamonds == 0
    replayed = await coinstream(stack, "dead-letters", "replay", str(letter.sequence))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert (await wait_for_lifetime(clients, creator_id, 11)).lifetime_diamonds == 11
    assert (await earnings(clients, other_creator)).lifetime_diamonds == 4


async def test_a_crash_between_copy_and_term_leaves_one_dead_letter(stack: Stack) -> None:
    garbage, message_id = b"\xff\xfe not a GiftSent either", new_id("garbage")
    try:
        await asyncio.to_thread(
            stack.restart_service,
            "payouts",
            {"COINSTREAM_FAULT_POINTS": "payouts.after_dead_letter_copied", **SHORT_ACK_WAIT},
        )
        await publish_raw(stack, [garbage], [message_id])
        assert await asyncio.to_thread(stack.wait_exit, "payouts") != 0
        await asyncio.to_thread(stack.start_service, "payouts", SHORT_ACK_WAIT)
        # Delivered again after the ack wait, copied again (the copy's Nats-Msg-Id keeps it one), terminated.
        assert await eventually(lambda: settlement_consumer_idle(stack), bool)
        copies = [letter for letter in await dead_letters(stack) if letter.original_msg_id == message_id]
        assert len(copies) == 1 and copies[0].payload == garbage
    finally:
        await asyncio.to_thread(stack.restart_service, "payouts")
