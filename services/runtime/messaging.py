"""NATS JetStream: the connection and the streams and consumers, declared as code and idempotently."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable

import nats.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from services.runtime.nats_login import (
    ANONYMOUS,
    PASSWORD_FILE_SETTING,
    PASSWORD_SETTING,
    USER_SETTING,
    NatsLogin,
)

# Every event subject, in one place (the contract's events; the README's Events table). Gifts publishes them through
# its outbox; payouts settles GiftSent; the live feed listens to all of gifts.v1.
GIFT_EVENTS = "gifts.>"  # everything stream GIFTS keeps
GIFT_FEED_SUBJECTS = "gifts.v1.*"  # what the live feed subscribes to (core NATS)
GIFT_SENT_SUBJECT = "gifts.v1.gift_sent"
# One message for the gifts one SendGift batch completed (GiftSentBatch), instead of one GiftSent each: a JetStream
# store, delivery, ack and delete per batch rather than per gift. Payouts settles both subjects.
GIFT_SENT_BATCH_SUBJECT = "gifts.v1.gift_sent_batch"
SETTLED_SUBJECTS = (GIFT_SENT_SUBJECT, GIFT_SENT_BATCH_SUBJECT)
STREAM_ENDED_SUBJECT = "gifts.v1.stream_ended"
MATCH_UPDATED_SUBJECT = "gifts.v1.match_updated"
MATCH_FINISHED_SUBJECT = "gifts.v1.match_finished"
GOAL_UPDATED_SUBJECT = "gifts.v1.goal_updated"
GOAL_REACHED_SUBJECT = "gifts.v1.goal_reached"
DEAD_LETTER_EVENTS = "dead_letters.>"  # everything stream DEAD_LETTERS keeps
GIFT_SENT_DEAD_LETTER_SUBJECT = "dead_letters.v1.gift_sent"
# The wallet publishes through its outbox; payouts applies them (clawbacks, freezes).
WALLET_EVENTS = "wallet.>"  # everything stream WALLET keeps
PURCHASE_REVERSED_SUBJECT = "wallet.v1.purchase_reversed"
ACCOUNT_STATUS_CHANGED_SUBJECT = "wallet.v1.account_status_changed"

# Payouts tells other backends what happened to creators' diamonds (published through its outbox).
PAYOUT_EVENTS = "payouts.>"  # everything stream PAYOUTS keeps
DIAMONDS_CLAWED_BACK_SUBJECT = "payouts.v1.diamonds_clawed_back"

GIFTS_STREAM = "GIFTS"
SETTLEMENT_CONSUMER = "payouts-settlement"
WALLET_STREAM = "WALLET"
PAYOUTS_STREAM = "PAYOUTS"
WALLET_EVENTS_CONSUMER = "payouts-wallet-events"

# An unsettled GiftSent is money owed to a creator, so the stream must never drop one for age or size:
# interest retention keeps each message until every consumer (payouts-settlement at least) has acked it, and
# discard NEW makes a full stream refuse publishes — the gifts outbox then holds the events — rather than
# silently dropping the oldest. The stream is still bounded (limits on every queue).
GIFTS_STREAM_CONFIG = StreamConfig(
    name=GIFTS_STREAM,
    subjects=[GIFT_EVENTS],
    retention=RetentionPolicy.INTEREST,
    discard=DiscardPolicy.NEW,
    storage=StorageType.FILE,
    max_bytes=8 * 1024**3,
    duplicate_window=120,
    num_replicas=1,
)

# Events a consumer could not process, kept for an operator with the reason and the original payload (`coinstream
# dead-letters`). Limits retention: a dead letter stays until it is replayed; discard NEW, so a full stream refuses
# a new dead letter — its event then stays undelivered in its own stream — rather than dropping an old one.
DEAD_LETTERS_STREAM = "DEAD_LETTERS"
DEAD_LETTERS_STREAM_CONFIG = StreamConfig(
    name=DEAD_LETTERS_STREAM,
    subjects=[DEAD_LETTER_EVENTS],
    retention=RetentionPolicy.LIMITS,
    discard=DiscardPolicy.NEW,
    storage=StorageType.FILE,
    max_bytes=1024**3,
    max_msgs=1_000_000,
    duplicate_window=120,
    num_replicas=1,
)

# A reversal is diamonds a creator must give back, a freeze a withdrawal to refuse: kept like GIFTS (until payouts has
# them; a full stream refuses, the wallet's outbox holds them). Few and small, so a quarter GiB is years of them; the
# streams' sizes together stay within a server's 10 GB of file store (JetStream reserves each stream's max_bytes).
WALLET_STREAM_CONFIG = StreamConfig(
    name=WALLET_STREAM,
    subjects=[WALLET_EVENTS],
    retention=RetentionPolicy.INTEREST,
    discard=DiscardPolicy.NEW,
    storage=StorageType.FILE,
    max_bytes=256 * 1024**2,
    duplicate_window=120,
    num_replicas=1,
)

# Payouts' events are for other backends, whose consumers come and go: kept a week whoever reads them (limits
# retention), bounded like every stream; a full stream refuses and payouts' outbox holds them.
PAYOUTS_STREAM_CONFIG = StreamConfig(
    name=PAYOUTS_STREAM,
    subjects=[PAYOUT_EVENTS],
    retention=RetentionPolicy.LIMITS,
    discard=DiscardPolicy.NEW,
    storage=StorageType.FILE,
    max_bytes=256 * 1024**2,
    max_age=7 * 86_400,
    duplicate_window=120,
    num_replicas=1,
)

WALLET_EVENTS_CONSUMER_CONFIG = ConsumerConfig(
    durable_name=WALLET_EVENTS_CONSUMER,
    filter_subject=WALLET_EVENTS,
    deliver_policy=DeliverPolicy.ALL,
    ack_policy=AckPolicy.EXPLICIT,
    ack_wait=30,
    max_ack_pending=1_000,
    max_deliver=-1,
)

SETTLEMENT_CONSUMER_CONFIG = ConsumerConfig(
    durable_name=SETTLEMENT_CONSUMER,
    filter_subjects=list(SETTLED_SUBJECTS),
    deliver_policy=DeliverPolicy.ALL,
    ack_policy=AckPolicy.EXPLICIT,
    ack_wait=30,
    max_ack_pending=20_000,
    max_deliver=-1,
)

LOGIN_SETTINGS = f"{USER_SETTING}, {PASSWORD_SETTING} or {PASSWORD_FILE_SETTING}"
DECLARE_PATIENCE_SECONDS = 60.0
DECLARE_RETRY_SECONDS = 1.0
FETCH_RETRY_PAUSE_SECONDS = 1.0

# JetStream's answers (nats-server's errors.json) that mean "not yet", not "no": a start-up retries them.
TRANSIENT_JETSTREAM_ERRORS = {
    10004: "JSClusterIncompleteErr",  # incomplete results: a peer did not answer in time
    10005: "JSClusterNoPeersErrF",  # no suitable peers for placement: the meta leader does not know enough peers yet
    10008: "JSClusterNotAvailErr",  # JetStream system temporarily unavailable: no meta leader
    10009: "JSClusterNotLeaderErr",  # the cluster cannot handle the request: leadership is changing
    10075: "JSPeerRemapErr",  # peer remap failed: a node is rejoining
}

log = structlog.get_logger()


def server_urls(url: str) -> list[str]:
    """COINSTREAM_NATS_URL: one server, or the nodes of a cluster separated by commas."""
    return [server.strip() for server in url.split(",") if server.strip()]


async def connect(
    nc: NatsClient, url: str, client_name: str, login: NatsLogin = ANONYMOUS, *, tls: ssl.SSLContext | None = None
) -> None:
    """Connects a client made earlier (services are wired to it before the server starts). A server that refuses
    the login is retried like an unreachable one (an operator may be adding the user), with a warning that names the
    settings to check."""

    async def on_error(error: Exception) -> None:
        if "authorization violation" in str(error).lower():
            log.warning("nats_login_refused", user=login.user or "(anonymous)", check=LOGIN_SETTINGS)
            return
        log.warning("nats_error", error=str(error))

    async def on_disconnected() -> None:
        log.warning("nats_disconnected")

    async def on_reconnected() -> None:
        log.info("nats_reconnected")

    await nc.connect(
        # One URL, or several separated by commas (the nodes of a cluster; the client fails over between them).
        servers=server_urls(url),
        name=client_name,
        user=login.user or None,
        password=login.password or None,
        inbox_prefix=login.inbox_prefix,
        max_reconnect_attempts=-1,
        # nats-py annotates this int, but only sleeps and compares with it: half a second works as meant.
        reconnect_time_wait=0.5,  # type: ignore[arg-type]
        connect_timeout=5,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        tls=tls,
        # TLS before anything else (the server needs tls { handshake_first: true }): otherwise nats-py upgrades only
        # when the server's first, plaintext INFO asks for it, so a man in the middle answering as a plaintext server
        # would be sent the login in clear text.
        tls_handshake_first=tls is not None,
    )


async def ensure_stream(nc: NatsClient, config: StreamConfig, replicas: int = 1) -> None:
    """Declares one of the streams above (GIFTS_STREAM_CONFIG, …), waiting out a cluster's "not yet"."""
    assert config.name is not None
    js = nc.jetstream()
    await _until_jetstream_answers(nc, config.name, replicas, lambda: _ensure_stream(js, config, replicas))


async def ensure_settlement_consumer(nc: NatsClient, replicas: int = 1, ack_wait_seconds: float | None = None) -> None:
    """Declared by payouts and by gifts too: with interest retention a GiftSent published while no consumer
    exists would be dropped, so the publisher makes sure its settler is there before the first publish. Payouts
    gives its configured ack_wait (an existing consumer is updated to it); gifts leaves it as it is."""
    await ensure_stream(nc, GIFTS_STREAM_CONFIG, replicas)
    await _ensure_consumer(nc, GIFTS_STREAM, SETTLEMENT_CONSUMER_CONFIG, replicas, ack_wait_seconds)


async def ensure_wallet_events_consumer(
    nc: NatsClient, replicas: int = 1, ack_wait_seconds: float | None = None
) -> None:
    """Declared by the wallet (before its first publish, as gifts does for settlement) and by payouts."""
    await ensure_stream(nc, WALLET_STREAM_CONFIG, replicas)
    await _ensure_consumer(nc, WALLET_STREAM, WALLET_EVENTS_CONSUMER_CONFIG, replicas, ack_wait_seconds)


async def _ensure_consumer(
    nc: NatsClient, stream: str, config: ConsumerConfig, replicas: int, ack_wait_seconds: float | None
) -> None:
    js = nc.jetstream()
    name = config.durable_name
    assert name is not None
    if ack_wait_seconds is not None:
        config = config.evolve(ack_wait=ack_wait_seconds)

    async def declare() -> None:
        try:
            info = await js.consumer_info(stream, name)
        except NotFoundError:
            await js.add_consumer(stream, config)
            return
        if ack_wait_seconds is not None and abs((info.config.ack_wait or 0.0) - ack_wait_seconds) > 0.001:
            # Creating a durable consumer that exists updates its editable settings, ack_wait among them.
            await js.add_consumer(stream, config)
            log.info("consumer_ack_wait_set", consumer=name, ack_wait_seconds=ack_wait_seconds)
        elif _filters(info.config) != _filters(config):
            # A consumer declared before a subject was added (settlement before gift_sent_batch): under interest
            # retention a message no consumer's filter takes is dropped, so the filter is widened before use.
            await js.add_consumer(stream, config.evolve(ack_wait=info.config.ack_wait))
            log.info("consumer_filter_set", consumer=name, subjects=sorted(_filters(config)))

    # The consumer has a leader of its own, elected after the stream's: a cluster may still be electing it.
    await _until_jetstream_answers(nc, f"{stream}/{name}", replicas, declare)


def _filters(config: ConsumerConfig) -> frozenset[str]:
    return frozenset(config.filter_subjects or ([config.filter_subject] if config.filter_subject else []))


async def fetch(subscription: JetStreamContext.PullSubscription, batch_size: int, timeout_seconds: float) -> list[Msg]:
    """The next messages of a pull consumer, up to batch_size; none when there are none within the timeout, or NATS
    failed (then after a pause, so a consumer loop never spins)."""
    try:
        return await subscription.fetch(batch_size, timeout=timeout_seconds)
    except TimeoutError:  # nats-py raises it when there is nothing to fetch (nats.py #418)
        return []
    except nats.errors.Error as error:
        log.warning("jetstream_fetch_failed", error=repr(error))
        await asyncio.sleep(FETCH_RETRY_PAUSE_SECONDS)
        return []


async def quietly(operation: Awaitable[object]) -> None:
    """Acks, naks and cleanups are best effort: failing them only causes a redelivery."""
    try:
        await operation
    except nats.errors.Error as error:
        log.warning("nats_operation_failed", error=repr(error))


class JetStreamNotReady(RuntimeError):
    """JetStream kept answering "not yet" for the whole start-up wait: the service exits (and is restarted)."""


def is_transient(error: Exception) -> bool:
    """An answer that means "not yet" from a cluster still forming, electing a leader or placing replicas."""
    if isinstance(error, nats.errors.TimeoutError | nats.errors.NoRespondersError | ServiceUnavailableError):
        return True
    return isinstance(error, APIError) and error.err_code in TRANSIENT_JETSTREAM_ERRORS


async def _until_jetstream_answers(
    nc: NatsClient,
    what: str,
    replicas: int,
    declare: Callable[[], Awaitable[None]],
    patience_seconds: float = DECLARE_PATIENCE_SECONDS,
) -> None:
    """A cluster just formed, or rejoining a node, may have no meta or stream leader yet, or a meta leader that does
    not yet know enough peers to place `replicas` copies: a starting service waits for it (its health NOT_SERVING,
    the reason in its log) up to a minute, rather than exiting and crash-looping as if it were the
    outage. Only then does it give up, naming what it asked for and what the cluster showed it."""
    deadline = time.monotonic() + patience_seconds
    while True:
        try:
            await declare()
            return
        except Exception as error:
            if not is_transient(error):
                raise
            if time.monotonic() > deadline:
                raise JetStreamNotReady(
                    f"JetStream did not accept {what} with {replicas} replica(s) within {patience_seconds:.0f}"
                    f" s; its last answer: {_answer(error)}; the servers the cluster reported: {_servers(nc)}"
                ) from error
            log.warning("jetstream_not_ready", declaring=what, replicas=replicas, reason=_answer(error))
            await asyncio.sleep(DECLARE_RETRY_SECONDS)


def _answer(error: Exception) -> str:
    if isinstance(error, APIError) and error.err_code is not None:
        return f"{error.description} (err_code {error.err_code})"
    return repr(error)


def _servers(nc: NatsClient) -> str:
    """The nodes this client knows: the ones configured, and those the servers announced (a cluster's INFO lists
    its routed peers), so a missing node shows."""
    return ", ".join(sorted(server.netloc for server in nc.servers)) or "(none)"


async def _ensure_stream(js: JetStreamContext, config: StreamConfig, replicas: int) -> None:
    """Creates the stream with `replicas` copies (COINSTREAM_NATS_STREAM_REPLICAS), or brings an existing one up to
    this release's configuration. A start never lowers the replica count: a service started with the default (1)
    against a cluster where an operator raised it to 3 must not quietly take the copies away."""
    assert config.name is not None
    # Look before adding: nats-server checks storage reservations before noticing that the stream exists, so adding
    # an existing stream whose max_bytes exceeds half of max_file_store fails "insufficient storage" (err 10047).
    current = await _stream_replicas(js, config.name)
    if current is None:
        try:
            await js.add_stream(config.evolve(num_replicas=replicas))
            return
        except APIError:
            current = await _stream_replicas(js, config.name)
            if current is None:
                raise  # a real failure, not another process creating it meanwhile
    if current > replicas:
        log.info("stream_replicas_kept", stream=config.name, replicas=current, configured=replicas)
    await js.update_stream(config.evolve(num_replicas=max(current, replicas)))


async def _stream_replicas(js: JetStreamContext, name: str) -> int | None:
    """The stream's replica count, or None when it does not exist."""
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        return None
    return info.config.num_replicas or 1
