"""NATS refuses whoever has no business there, against the suite's real nats-server: no anonymous client, no wrong
password; neither payouts' nor the wallet's credentials can publish a GiftSent (diamonds from nothing), nor gifts' or
payouts' a wallet event (a clawback or a freeze from nothing); gifts' cannot take events from the settlement consumer
nor forge dead letters, the wallet's neither from payouts' consumer of its events; and nobody — the operator
included — can delete or purge the GIFTS or WALLET streams. The rest of the suite proves the other half: every
service runs with its own login and only its own rights (services/runtime/nats_permissions.py), and gifts still
settle."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import pytest
from coinstream.events.v1 import events_pb2
from coinstream.wallet.v1 import wallet_pb2 as w
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from coinstream.testing.servers import free_port, nats_server_binary, stop_process, wait_for_port
from services.reconcile.reconciler import dead_lettered_gifts
from services.runtime.messaging import (
    DEAD_LETTERS_STREAM,
    GIFT_SENT_DEAD_LETTER_SUBJECT,
    GIFT_SENT_SUBJECT,
    GIFTS_STREAM,
    PURCHASE_REVERSED_SUBJECT,
    SETTLEMENT_CONSUMER,
    WALLET_EVENTS,
    WALLET_EVENTS_CONSUMER,
    WALLET_STREAM,
)
from services.runtime.nats_login import NatsLogin
from services.runtime.nats_permissions import (
    GIFTS_USER,
    OPERATOR_USER,
    PAYOUTS_USER,
    SERVICE_USERS,
    USERS,
    WALLET_USER,
    environment_variable_for,
    password_from_environment,
    render_authorization,
)
from tests.support.clients import ADMIN, Clients
from tests.support.factories import buy, create_account, make_account, reversal
from tests.support.gifts import go_live, send
from tests.support.payouts import earnings, gift_sent, wait_for_lifetime
from tests.support.stack import REPO_ROOT, Stack, operator_nats

# A request nats-server refused never gets an answer: the client gives up after this.
REFUSED_REQUEST_TIMEOUT_SECONDS = 1.0
# How long the wallet's outbox relay may take to publish an event it queued (it is woken at once).
WALLET_EVENT_WAIT_SECONDS = 10.0
# Every service user with another's password: (user, whose password).
SERVICE_PAIRS = list(itertools.permutations(SERVICE_USERS.values(), 2))


class PermissionErrors:
    """What nats-server reported to one client: a refused publish or subscribe is an asynchronous -ERR, not an
    answer to the request."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, error: Exception) -> None:
        self.seen.append(str(error))

    def refused(self, subject: str) -> bool:
        # nats-py lowercases the server's message.
        return any("permissions violation" in seen and subject.lower() in seen for seen in self.seen)


@dataclass
class Session:
    nc: NatsClient
    js: JetStreamContext
    errors: PermissionErrors


@asynccontextmanager
async def logged_in(stack: Stack, user: str) -> AsyncIterator[Session]:
    """A client with the user's credentials, as the service (or an operator) has them."""
    errors = PermissionErrors()
    nc = await nats.connect(
        stack.nats.url,
        **stack.nats.credentials.login(user).connect_options(),
        error_cb=errors.record,
        allow_reconnect=False,
    )
    try:
        yield Session(nc, nc.jetstream(timeout=REFUSED_REQUEST_TIMEOUT_SECONDS), errors)
    finally:
        await nc.close()


async def refused_connect(url: str, login: NatsLogin) -> str:
    """The error a connection attempt ends with (it must end with one)."""

    async def quiet(error: Exception) -> None:
        """The failure is the point; no traceback for it."""

    with pytest.raises(nats.errors.Error) as refused:
        nc: NatsClient = await nats.connect(
            url, **login.connect_options(), allow_reconnect=False, connect_timeout=2, error_cb=quiet
        )
        await nc.close()
    return str(refused.value)


async def stored_last_sequence(stack: Stack, stream: str) -> int:
    nc = await operator_nats(stack.nats)
    try:
        return (await nc.jetstream().stream_info(stream)).state.last_seq
    finally:
        await nc.close()


async def stored_since(stack: Stack, stream: str, after_sequence: int) -> list[bytes]:
    """Payloads stored in the stream after a sequence (other tests' traffic included), read as the operator."""
    nc = await operator_nats(stack.nats)
    try:
        js = nc.jetstream()
        last = (await js.stream_info(stream)).state.last_seq
        payloads = []
        for sequence in range(after_sequence + 1, last + 1):
            try:
                payloads.append((await js.get_msg(stream, sequence)).data or b"")
            except NotFoundError:
                continue  # acknowledged by every consumer and removed (interest retention)
        return payloads
    finally:
        await nc.close()


def start_nats_server(config: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log_path = config.with_suffix(".log")
    with open(log_path, "ab") as log:
        server = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    wait_for_port(port, server, "nats-server", log_path)
    return server


async def test_an_anonymous_client_is_refused(stack: Stack) -> None:
    assert "authorization violation" in (await refused_connect(stack.nats.url, NatsLogin())).lower()


async def test_a_wrong_password_is_refused(stack: Stack) -> None:
    for user in USERS:
        wrong = NatsLogin(user, stack.nats.credentials.passwords[user][::-1])
        assert "authorization violation" in (await refused_connect(stack.nats.url, wrong)).lower()
    # And a password of another user is not this one's.
    for user, other in SERVICE_PAIRS:
        borrowed = NatsLogin(user, stack.nats.credentials.passwords[other])
        assert "authorization violation" in (await refused_connect(stack.nats.url, borrowed)).lower(), (user, other)


@pytest.mark.parametrize("user", [PAYOUTS_USER, WALLET_USER])
async def test_no_service_but_gifts_can_publish_a_gift_sent(stack: Stack, clients: Clients, user: str) -> None:
    """The attack the permissions are for: a GiftSent for any creator becomes withdrawable diamonds."""
    creator_id = f"creator-forged-by-{user}"
    forged = gift_sent(creator_id, 1_000_000).SerializeToString()
    before = await stored_last_sequence(stack, GIFTS_STREAM)
    async with logged_in(stack, user) as session:
        with pytest.raises(nats.errors.TimeoutError):  # no acknowledgement: JetStream never saw it
            await session.js.publish(GIFT_SENT_SUBJECT, forged, headers={"Nats-Msg-Id": f"forged-by-{user}"})
        await session.nc.publish(GIFT_SENT_SUBJECT, forged)  # nor as a plain core-NATS message
        await session.nc.flush()
        assert session.errors.refused(GIFT_SENT_SUBJECT), session.errors.seen
    assert forged not in await stored_since(stack, GIFTS_STREAM, before)
    assert (await earnings(clients, creator_id)).lifetime_diamonds == 0


@pytest.mark.parametrize("user", [GIFTS_USER, PAYOUTS_USER])
async def test_no_service_but_the_wallet_can_publish_a_wallet_event(stack: Stack, user: str) -> None:
    """A PurchaseReversed makes payouts claw diamonds back from the creators it names: only the wallet, which
    reversed the purchase, may publish one (payouts applies them, gifts has nothing to do with them)."""
    forged = events_pb2.PurchaseReversed(
        reversal_id=f"forged-by-{user}", purchase_id="pur_forged", account_id="fan-forged", coins=1_000, part=1, parts=1
    )
    forged.gifts.add(gift_transaction_id="gtx_forged", coins=1_000)
    payload = forged.SerializeToString()
    before = await stored_last_sequence(stack, WALLET_STREAM)
    async with logged_in(stack, user) as session:
        with pytest.raises(nats.errors.TimeoutError):  # no acknowledgement: JetStream never saw it
            await session.js.publish(PURCHASE_REVERSED_SUBJECT, payload, headers={"Nats-Msg-Id": f"forged-by-{user}"})
        await session.nc.publish(PURCHASE_REVERSED_SUBJECT, payload)  # nor as a plain core-NATS message
        await session.nc.flush()
        assert session.errors.refused(PURCHASE_REVERSED_SUBJECT), session.errors.seen
    assert payload not in await stored_since(stack, WALLET_STREAM, before)


async def test_the_wallet_publishes_its_events_with_its_own_login(clients: Clients, stack: Stack) -> None:
    """The other half, end to end: the wallet's outbox relay, logged in as `wallet`, publishes a reversal's event."""
    nc = await operator_nats(stack.nats)
    try:
        published = await nc.subscribe(PURCHASE_REVERSED_SUBJECT)  # core NATS: sees each publish as it happens
        await nc.flush()
        account_id = await create_account(clients)
        bought = await buy(clients, account_id, "coins_330")
        reversed_ = await clients.wallet.ReversePurchase(reversal(bought.purchase.purchase_id), metadata=ADMIN)
        assert reversed_.account_status == w.ACCOUNT_STATUS_ACTIVE

        async def its_event() -> events_pb2.PurchaseReversed:
            while True:
                event = events_pb2.PurchaseReversed.FromString((await published.next_msg(timeout=None)).data)
                if event.reversal_id == reversed_.transaction_id:
                    return event

        event = await asyncio.wait_for(its_event(), WALLET_EVENT_WAIT_SECONDS)
        assert (event.purchase_id, event.account_id) == (bought.purchase.purchase_id, account_id)
    finally:
        await nc.close()


async def settle_a_real_gift(clients: Clients) -> None:
    """A gift sent and settled, so its GiftSent is in GIFTS (the shared stack takes no made-up one)."""
    stream = await go_live(clients)
    await send(clients, await make_account(clients, package_id="coins_65"), stream.stream_id)
    await wait_for_lifetime(clients, stream.creator_id, 1)


def destructive_requests(sequence: int) -> dict[str, bytes]:
    """JetStream API requests that would drop money owed to creators: a stream deleted or purged, one unsettled
    GiftSent deleted, or the settlement consumer deleted (GIFTS keeps a message only while a consumer wants it); and
    likewise a reversal or freeze not yet applied (WALLET, payouts' consumer of it)."""
    return {
        f"$JS.API.STREAM.DELETE.{GIFTS_STREAM}": b"",
        f"$JS.API.STREAM.PURGE.{GIFTS_STREAM}": b"{}",
        f"$JS.API.STREAM.MSG.DELETE.{GIFTS_STREAM}": json.dumps({"seq": sequence}).encode(),
        f"$JS.API.CONSUMER.DELETE.{GIFTS_STREAM}.{SETTLEMENT_CONSUMER}": b"",
        f"$JS.API.STREAM.DELETE.{DEAD_LETTERS_STREAM}": b"",
        f"$JS.API.STREAM.PURGE.{DEAD_LETTERS_STREAM}": b"{}",
        f"$JS.API.STREAM.DELETE.{WALLET_STREAM}": b"",
        f"$JS.API.STREAM.PURGE.{WALLET_STREAM}": b"{}",
        f"$JS.API.STREAM.MSG.DELETE.{WALLET_STREAM}": json.dumps({"seq": 1}).encode(),
        f"$JS.API.CONSUMER.DELETE.{WALLET_STREAM}.{WALLET_EVENTS_CONSUMER}": b"",
    }


@pytest.mark.parametrize("user", [WALLET_USER, GIFTS_USER, PAYOUTS_USER, OPERATOR_USER])
async def test_nobody_can_delete_or_purge_the_streams(stack: Stack, clients: Clients, user: str) -> None:
    await settle_a_real_gift(clients)  # a message a delete could name, run alone too
    before = await stored_last_sequence(stack, GIFTS_STREAM)
    requests = destructive_requests(before)
    async with logged_in(stack, user) as session:
        outcomes = await asyncio.gather(
            *(
                session.nc.request(subject, payload, timeout=REFUSED_REQUEST_TIMEOUT_SECONDS)
                for subject, payload in requests.items()
            ),
            return_exceptions=True,
        )
        # No answer, not even an error from JetStream: the requests never got past the server's permissions.
        assert all(isinstance(outcome, nats.errors.TimeoutError) for outcome in outcomes), outcomes
        for subject in requests:
            assert session.errors.refused(subject), session.errors.seen
    nc = await operator_nats(stack.nats)
    try:
        js = nc.jetstream()
        info = await js.stream_info(GIFTS_STREAM)
        assert info.state.last_seq >= before and info.state.messages > 0
        await js.get_msg(GIFTS_STREAM, before)  # the message a delete named (the audit consumer keeps every one)
        await js.consumer_info(GIFTS_STREAM, SETTLEMENT_CONSUMER)
        await js.stream_info(DEAD_LETTERS_STREAM)
        await js.stream_info(WALLET_STREAM)
        await js.consumer_info(WALLET_STREAM, WALLET_EVENTS_CONSUMER)
    finally:
        await nc.close()


async def test_gifts_cannot_take_settlement_events_nor_forge_dead_letters(stack: Stack) -> None:
    before = await stored_last_sequence(stack, DEAD_LETTERS_STREAM)
    forged = gift_sent("creator-forged-by-gifts", 5).SerializeToString()
    async with logged_in(stack, GIFTS_USER) as gifts:
        # gifts may look at the settlement consumer (it declares it) but not pull from it: payouts' events.
        subscription = await gifts.js.pull_subscribe(
            GIFT_SENT_SUBJECT, durable=SETTLEMENT_CONSUMER, stream=GIFTS_STREAM
        )
        with pytest.raises(nats.errors.TimeoutError):
            await subscription.fetch(1, timeout=REFUSED_REQUEST_TIMEOUT_SECONDS)
        with pytest.raises(nats.errors.TimeoutError):
            await gifts.js.publish(GIFT_SENT_DEAD_LETTER_SUBJECT, forged, stream=DEAD_LETTERS_STREAM)
        with pytest.raises(nats.errors.TimeoutError):  # nor read the dead letters: payouts' and the operator's
            await gifts.js.stream_info(DEAD_LETTERS_STREAM)
        next_message = f"$JS.API.CONSUMER.MSG.NEXT.{GIFTS_STREAM}.{SETTLEMENT_CONSUMER}"
        assert gifts.errors.refused(next_message), gifts.errors.seen
        assert gifts.errors.refused(GIFT_SENT_DEAD_LETTER_SUBJECT), gifts.errors.seen
    assert forged not in await stored_since(stack, DEAD_LETTERS_STREAM, before)


async def test_the_wallet_cannot_take_its_events_from_payouts_consumer_nor_forge_dead_letters(stack: Stack) -> None:
    before = await stored_last_sequence(stack, DEAD_LETTERS_STREAM)
    forged = gift_sent("creator-forged-by-the-wallet", 5).SerializeToString()
    async with logged_in(stack, WALLET_USER) as wallet:
        # The wallet may look at payouts' consumer (it declares it) but not pull from it: payouts' events.
        subscription = await wallet.js.pull_subscribe(
            WALLET_EVENTS, durable=WALLET_EVENTS_CONSUMER, stream=WALLET_STREAM
        )
        with pytest.raises(nats.errors.TimeoutError):
            await subscription.fetch(1, timeout=REFUSED_REQUEST_TIMEOUT_SECONDS)
        with pytest.raises(nats.errors.TimeoutError):
            await wallet.js.publish(GIFT_SENT_DEAD_LETTER_SUBJECT, forged, stream=DEAD_LETTERS_STREAM)
        next_message = f"$JS.API.CONSUMER.MSG.NEXT.{WALLET_STREAM}.{WALLET_EVENTS_CONSUMER}"
        assert wallet.errors.refused(next_message), wallet.errors.seen
        assert wallet.errors.refused(GIFT_SENT_DEAD_LETTER_SUBJECT), wallet.errors.seen
    assert forged not in await stored_since(stack, DEAD_LETTERS_STREAM, before)


async def test_payouts_may_take_wallet_events_from_its_consumer(stack: Stack) -> None:
    """What payouts needs to apply reversals and freezes: its consumer of WALLET, pulls and acks (a message it gets
    here is not this test's: naked, so it is delivered again at once)."""
    async with logged_in(stack, PAYOUTS_USER) as payouts:
        await payouts.js.stream_info(WALLET_STREAM)
        await payouts.js.consumer_info(WALLET_STREAM, WALLET_EVENTS_CONSUMER)
        subscription = await payouts.js.pull_subscribe(
            WALLET_EVENTS, durable=WALLET_EVENTS_CONSUMER, stream=WALLET_STREAM
        )
        with contextlib.suppress(nats.errors.TimeoutError):  # nothing to take: no answer but no refusal either
            for message in await subscription.fetch(1, timeout=REFUSED_REQUEST_TIMEOUT_SECONDS):
                await message.nak()
        await payouts.nc.flush()
        assert payouts.errors.seen == []


async def test_payouts_reads_the_dead_letters_for_its_periodic_reconciliation(stack: Stack) -> None:
    """payouts runs reconcile with its own login (COINSTREAM_PAYOUTS_RECONCILE_INTERVAL_SECONDS), which lists the
    dead letters: stream info and "the next message at or after" reads of DEAD_LETTERS."""
    async with logged_in(stack, PAYOUTS_USER) as payouts:
        await payouts.js.stream_info(DEAD_LETTERS_STREAM)
        # An answer either way (a dead letter, or none from 1 on) proves the read was let through.
        with contextlib.suppress(NotFoundError):
            await payouts.js.get_msg(DEAD_LETTERS_STREAM, seq=1, subject=">", next=True)
        assert payouts.errors.seen == []
    payouts_login = stack.nats.credentials.login(PAYOUTS_USER)
    assert await dead_lettered_gifts(stack.nats.url, payouts_login) is not None


@pytest.mark.parametrize("service", ["wallet", "payouts"])
async def test_a_missing_password_file_stops_a_service_at_start_naming_it(
    stack: Stack, tmp_path: Path, service: str
) -> None:
    missing = tmp_path / "no-such-password"
    env = {
        **stack.service_env(service),
        f"COINSTREAM_{service.upper()}_PORT": str(free_port()),
        "COINSTREAM_NATS_PASSWORD_FILE": str(missing),
    }
    started = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", f"services.{service}"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0
    assert f"COINSTREAM_NATS_PASSWORD_FILE={missing}: cannot read it" in started.stdout + started.stderr


async def test_passwords_from_nats_servers_environment_as_the_deployment_renders_them(tmp_path: Path) -> None:
    """`coinstream nats-config --password-env` (and deploy/nats.conf) name environment variables instead of writing
    passwords: nats-server resolves them when it loads the configuration."""
    port = free_port()
    config = tmp_path / "nats.conf"
    references = {user: password_from_environment(environment_variable_for(user)) for user in USERS}
    config.write_text(f'listen: "127.0.0.1:{port}"\n' + render_authorization(references))
    passwords = {user: f"{user}-from-the-environment-0123456789" for user in USERS}
    server_env = {**os.environ, **{environment_variable_for(user): passwords[user] for user in USERS}}
    server = await asyncio.to_thread(start_nats_server, config, port, server_env)
    try:
        url = f"nats://127.0.0.1:{port}"
        for user in USERS:
            nc = await nats.connect(url, user=user, password=passwords[user], allow_reconnect=False)
            await nc.close()
        await refused_connect(url, NatsLogin(GIFTS_USER, passwords[PAYOUTS_USER]))
        await refused_connect(url, NatsLogin())
    finally:
        stop_process(server)


@pytest.mark.parametrize(("user", "other"), SERVICE_PAIRS)
async def test_a_service_reads_only_its_own_replies(stack: Stack, user: str, other: str) -> None:
    """Replies (JetStream answers, pulled GiftSent events) go to each user's own inbox prefix: one service's
    password does not let it listen to another's replies, nor to the operator's."""
    async with logged_in(stack, user) as session:
        for foreign in (f"_INBOX_{other}.>", "_INBOX_operator.>", "_INBOX.>"):
            await session.nc.subscribe(foreign)
        await session.nc.flush()
        await asyncio.sleep(0.2)  # the server's refusals arrive asynchronously
        for foreign in (f"_INBOX_{other}.>", "_INBOX_operator.>", "_INBOX.>"):
            assert session.errors.refused(foreign), session.errors.seen
