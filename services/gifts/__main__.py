"""The gifts service: python -m services.gifts serves, python -m services.gifts migrate only migrates."""

from __future__ import annotations

from pathlib import Path

from coinstream.gifts.v1 import gifts_pb2, gifts_pb2_grpc

from services.gifts.config import GiftsSettings
from services.gifts.events import CLOSING_SUBJECTS
from services.gifts.feed import GiftFeed
from services.gifts.postgres_store import PostgresGiftStore
from services.gifts.service import FINISHED_MATCHES_PER_PASS, RECOVERY_BATCH_SIZE, GiftService
from services.gifts.servicer import GiftServicer
from services.gifts.store import GIFT_OUTBOX
from services.gifts.wallet_client import WalletClient, wallet_tls
from services.gifts.wallet_credential import ServiceToken
from services.runtime import messaging, outbox, polling
from services.runtime.server import ServiceRuntime
from services.runtime.server import main as runtime_main

MIGRATIONS = Path(__file__).parent / "migrations"


async def main() -> None:
    settings = GiftsSettings()
    runtime = ServiceRuntime(settings)
    pool = runtime.use_database(MIGRATIONS)
    nc = runtime.use_nats()
    js = nc.jetstream()
    runtime.on_startup(lambda: messaging.ensure_settlement_consumer(nc, settings.nats_stream_replicas))
    feed = GiftFeed(
        settings.gifts_feed_max_watchers,
        settings.gifts_feed_watcher_queue_size,
        settings.gifts_feed_stuck_watcher_grace_seconds,
        settings.gifts_feed_max_watchers_per_caller,
    )
    feed.use(nc)
    wallet = WalletClient(
        settings.gifts_wallet_address,
        ServiceToken(
            settings.gifts_wallet_subject,
            token=settings.gifts_wallet_token.get_secret_value(),
            token_file=settings.gifts_wallet_token_file,
            # Minting needs the signing key: only where it is the shared HS256 secret and nothing was given.
            auth_secret="" if settings.wallet_credential_given else settings.auth_secret.get_secret_value(),
        ),
        settings.gifts_wallet_timeout_seconds,
        wallet_tls(settings),
    )
    relay = outbox.OutboxRelay(
        pool, js, GIFT_OUTBOX, settings.gifts_relay_interval_seconds, closing_subjects=CLOSING_SUBJECTS
    )
    gifts = GiftService(
        PostgresGiftStore(pool),
        wallet,
        feed,
        settings.batch_policy(),
        on_event_queued=relay.wake,
        per_gift_events=settings.gifts_per_gift_events,
    )
    servicer = GiftServicer(gifts, settings.match_durations, settings.stream_limits)
    runtime.add_service(
        gifts_pb2_grpc.add_GiftServiceServicer_to_server,
        servicer,
        gifts_pb2.DESCRIPTOR.services_by_name["GiftService"].full_name,
    )

    async def recover_gifts() -> bool:
        return await gifts.recover_pending_gifts(settings.gifts_recovery_age_seconds) >= RECOVERY_BATCH_SIZE

    async def finish_matches() -> bool:
        return await gifts.finish_due_matches() >= FINISHED_MATCHES_PER_PASS

    runtime.add_periodic("gift_recovery", settings.gifts_recovery_interval_seconds, recover_gifts)
    # Every replica runs one: finishing a match is one transaction that a second finisher waits for and skips.
    runtime.add_periodic("match_finisher", settings.gifts_match_finish_interval_seconds, finish_matches)
    runtime.add_worker("outbox_relay", relay.run_forever)
    runtime.add_worker("gift_feed_connection", feed.watch_connection)
    if settings.metrics_port:
        probes = {"outbox": lambda: outbox.measure_backlog(pool, GIFT_OUTBOX)}
        runtime.add_periodic("metrics", settings.metrics_poll_interval_seconds, lambda: polling.poll_once(probes))
    try:
        await runtime.run()
    finally:
        await wallet.close()


if __name__ == "__main__":
    runtime_main(main, GiftsSettings, MIGRATIONS)
