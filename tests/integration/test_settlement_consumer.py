"""The settlement consumer across an upgrade: one declared before gifts.v1.gift_sent_batch existed filtered only
gifts.v1.gift_sent, and under interest retention a batch message no consumer's filter takes is dropped. Declaring it
again — as payouts and gifts do at every start — widens the filter before either uses it, keeping its ack_wait."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from nats.js.api import ConsumerConfig

from coinstream.testing.servers import NatsServer, free_port
from services.runtime import messaging
from tests.support.stack import operator_nats


async def test_an_older_settlement_consumer_is_widened_to_gift_sent_batches() -> None:
    root = Path(tempfile.mkdtemp(prefix="coinstream-test-consumer-"))
    server = NatsServer(root / "nats" / "data", free_port())
    try:
        await asyncio.to_thread(server.start)
        nc = await operator_nats(server)
        try:
            js = nc.jetstream()
            await messaging.ensure_stream(nc, messaging.GIFTS_STREAM_CONFIG)
            older = ConsumerConfig(
                durable_name=messaging.SETTLEMENT_CONSUMER,
                filter_subject=messaging.GIFT_SENT_SUBJECT,
                ack_policy=messaging.SETTLEMENT_CONSUMER_CONFIG.ack_policy,
                deliver_policy=messaging.SETTLEMENT_CONSUMER_CONFIG.deliver_policy,
                ack_wait=7,
                max_ack_pending=messaging.SETTLEMENT_CONSUMER_CONFIG.max_ack_pending,
                max_deliver=-1,
            )
            await js.add_consumer(messaging.GIFTS_STREAM, older)
            await messaging.ensure_settlement_consumer(nc)  # gifts' declaration: no ack_wait of its own
            info = await js.consumer_info(messaging.GIFTS_STREAM, messaging.SETTLEMENT_CONSUMER)
            assert set(info.config.filter_subjects or []) == set(messaging.SETTLED_SUBJECTS)
            assert info.config.ack_wait == 7
            ack = await js.publish(messaging.GIFT_SENT_BATCH_SUBJECT, b"kept", headers={"Nats-Msg-Id": "batch-1"})
            assert (await js.consumer_info(messaging.GIFTS_STREAM, messaging.SETTLEMENT_CONSUMER)).num_pending == 1
            assert ack.seq == 1
        finally:
            await nc.close()
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(root, ignore_errors=True)
