"""Reading back what the services published to JetStream (the suite's stack keeps every event:
tests/support/stack.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

import nats
import nats.errors
from coinstream.events.v1 import events_pb2
from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from coinstream.testing.servers import NatsServer
from services.runtime.messaging import GIFT_SENT_BATCH_SUBJECT, GIFT_SENT_SUBJECT
from tests.support.stack import Stack, operator_nats

READ_IDLE_SECONDS = 2.0

EventT = TypeVar("EventT", bound=Message)


async def messages_on(server: NatsServer, subject: str) -> list[Msg]:
    """Every message stored on the subject, from the start (an ephemeral ordered consumer read until nothing is
    pending)."""
    nc = await operator_nats(server)
    try:
        subscription = await nc.jetstream().subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
        messages: list[Msg] = []
        try:
            while True:
                try:
                    message = await subscription.next_msg(timeout=READ_IDLE_SECONDS)
                except nats.errors.TimeoutError:
                    return messages  # nothing on the subject
                messages.append(message)
                if message.metadata.num_pending == 0:
                    return messages
        finally:
            await subscription.unsubscribe()
    finally:
        await nc.close()


async def events_on(
    server: NatsServer,
    subject: str,
    event_type: type[EventT],
    wanted: Callable[[EventT], bool],
    *,
    at_least: int = 1,
    timeout_seconds: float = 15.0,
) -> list[EventT]:
    """The events on the subject that wanted() picks, once at least at_least of them are there (or the time ran
    out: then whatever is there)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        found = [
            event
            for event in (event_type.FromString(message.data) for message in await messages_on(server, subject))
            if wanted(event)
        ]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


async def gift_sent_messages(
    server: NatsServer, gift_transaction_id: str, *, timeout_seconds: float = 15.0
) -> list[Msg]:
    """Every message in the GIFTS stream that carries this gift's GiftSent — its own, or a GiftSentBatch it is in —
    once at least one arrived (or the time ran out)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        found = [
            message
            for message in await messages_on(server, GIFT_SENT_SUBJECT)
            if message.headers and message.headers.get("Nats-Msg-Id") == gift_transaction_id
        ]
        found += [
            message
            for message in await messages_on(server, GIFT_SENT_BATCH_SUBJECT)
            if any(event.gift_transaction_id == gift_transaction_id for event in _batched(message))
        ]
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


def _batched(message: Msg) -> list[events_pb2.GiftSent]:
    return list(events_pb2.GiftSentBatch.FromString(message.data).gifts)


async def published_event(stack: Stack, gift_transaction_id: str) -> events_pb2.GiftSent:
    """The one GiftSent published for this gift (on its own or in a batch)."""
    [message] = await gift_sent_messages(stack.nats, gift_transaction_id)
    if message.subject == GIFT_SENT_BATCH_SUBJECT:
        [event] = [event for event in _batched(message) if event.gift_transaction_id == gift_transaction_id]
        return event
    return events_pb2.GiftSent.FromString(message.data)
