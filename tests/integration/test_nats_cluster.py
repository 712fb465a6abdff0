"""A 3-node NATS cluster (three nats-server processes on loopback) with the streams at 3 replicas
(COINSTREAM_NATS_STREAM_REPLICAS=3): under a gift load one node is killed with -9 and restarted, then the GIFTS
stream's leader. Nothing is lost, nothing doubled, reconcile is clean; and a start with fewer replicas configured
never lowers the count. A stack of its own: the suite's runs a single server. As everywhere, each service logs in
with its own NATS user and the test as the operator; the nodes' routes log in to each other too (a route connection
is subject to no user's permissions, so an open route port would undo them)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from coinstream.testing.servers import NatsCluster, NatsServer, PostgresServer, free_port
from coinstream.testing.stack import Stack
from services.runtime import messaging
from tests.support.clients import Clients, clients_for
from tests.support.factories import balance, make_account
from tests.support.gifts import go_live
from tests.support.invariants import all_violations, wait_until_settled
from tests.support.load import GiftLoad
from tests.support.stack import SUITE_SETTINGS, operator_nats

pytestmark = pytest.mark.slow

REPLICAS = 3
FANS = 6
LOAD_SECONDS = 12.0


@asynccontextmanager
async def cluster_stack() -> AsyncIterator[tuple[Stack, NatsCluster]]:
    root = new_root()
    cluster = NatsCluster.on_free_ports(root / "nats", size=REPLICAS)
    stack = Stack(
        root=root,
        postgres=PostgresServer(root / "postgres" / "data", free_port(), durable=False),
        nats=cluster,  # type: ignore[arg-type]  # Stack types it NatsServer; a cluster has the url, start, stop used
        base_env={**SUITE_SETTINGS, "COINSTREAM_NATS_STREAM_REPLICAS": str(REPLICAS)},
    )
    try:
        await asyncio.to_thread(stack.start_servers)
        # Every peer known to the meta leader before the services declare their 3-replica streams: the services
        # would wait for it too (services/runtime/messaging.py), but the test should not lean on their patience.
        await asyncio.to_thread(cluster.wait_until_formed)
        await asyncio.to_thread(stack.start_services)
        yield stack, cluster
    finally:
        await asyncio.to_thread(stack.stop)
        shutil.rmtree(root, ignore_errors=True)


def new_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="coinstream-cluster-"))
    root.chmod(0o755)  # the unprivileged postgres user must reach its data directory
    return root


async def stream_state(cluster: NatsCluster) -> tuple[int, str]:
    """The GIFTS stream's replica count and the name of its leader."""
    nc = await operator_nats(cluster)
    try:
        info = await nc.jetstream().stream_info(messaging.GIFTS_STREAM)
        assert info.cluster is not None and info.cluster.leader is not None
        return info.config.num_replicas or 1, info.cluster.leader
    finally:
        await nc.close()


def node_named(cluster: NatsCluster, name: str) -> NatsServer:
    return next(node for node in cluster.nodes if node.server_name == name)


async def kill_and_restart(node: NatsServer, down_seconds: float) -> None:
    await asyncio.to_thread(node.kill)
    await asyncio.sleep(down_seconds)
    await asyncio.to_thread(node.start)


async def faults(cluster: NatsCluster) -> None:
    await asyncio.sleep(2.0)
    _, leader = await stream_state(cluster)
    follower = next(node for node in cluster.nodes if node.server_name != leader)
    await kill_and_restart(follower, 2.0)
    await asyncio.sleep(2.0)
    _, leader = await stream_state(cluster)  # the stream's leader now, wherever it moved
    await kill_and_restart(node_named(cluster, leader), 2.0)


async def test_a_cluster_node_then_the_stream_leader_killed_under_load() -> None:
    async with cluster_stack() as (stack, cluster):
        replicas, _ = await stream_state(cluster)
        assert replicas == REPLICAS
        async with clients_for(stack) as clients:
            await run_load(stack, clients, cluster)
        # A start configured with fewer replicas (the default, 1) leaves the cluster's 3 alone.
        nc = await operator_nats(cluster)
        try:
            await messaging.ensure_stream(nc, messaging.GIFTS_STREAM_CONFIG, replicas=1)
        finally:
            await nc.close()
        assert (await stream_state(cluster))[0] == REPLICAS


async def run_load(stack: Stack, clients: Clients, cluster: NatsCluster) -> None:
    stream = await go_live(clients)
    fans = [await make_account(clients, package_id="coins_1321") for _ in range(FANS)]
    funded = {fan: await balance(clients, fan) for fan in fans}
    load = GiftLoad(clients, stream.stream_id, fans)
    await asyncio.gather(load.run(LOAD_SECONDS), faults(cluster))
    for fan in fans:
        spent = sum(reply.gift.coins for reply in load.sent if reply.gift.sender_id == fan)
        assert await balance(clients, fan) == funded[fan] - spent
    assert len({reply.gift.gift_transaction_id for reply in load.sent}) == len(load.sent)
    await wait_until_settled(stack, timeout_seconds=60)
    assert await all_violations(stack) == []


async def test_a_server_without_the_route_password_cannot_join_the_cluster() -> None:
    """A route connection is subject to no user's permissions: a server that could join the cluster could inject
    any GiftSent. The nodes log in to each other's route port; one that does not know the password stays out."""
    root = new_root()
    cluster = NatsCluster.on_free_ports(root / "nats", size=2)
    # A stack of its own, hence passwords of its own: it offers the cluster a route password the cluster never set.
    intruder = NatsServer(
        root / "intruder" / "data",
        free_port(),
        server_name="intruder",
        cluster_port=free_port(),
        peer_cluster_ports=[cluster.nodes[0].cluster_port or 0],
    )
    received: list[bytes] = []

    async def on_message(message: Msg) -> None:
        received.append(message.data)

    try:
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(intruder.start)
        watcher = await operator_nats(cluster)
        injector = await operator_nats(intruder)
        try:
            await watcher.subscribe(messaging.GIFT_SENT_SUBJECT, cb=on_message)
            await watcher.flush()
            for _ in range(10):  # over two seconds: time for its route attempts
                await injector.publish(messaging.GIFT_SENT_SUBJECT, b"forged by a server outside the cluster")
                await asyncio.sleep(0.2)
            await injector.flush()
            await watcher.flush()
        finally:
            await injector.close()
            await watcher.close()
        assert received == []
        assert "Router connection closed: Authentication Failure" in cluster.nodes[0].log_path.read_text()
    finally:
        await asyncio.to_thread(intruder.stop)
        await asyncio.to_thread(cluster.stop)
        shutil.rmtree(root, ignore_errors=True)
