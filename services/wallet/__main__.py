"""The wallet service: python -m services.wallet serves, python -m services.wallet migrate only migrates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from coinstream.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from services.runtime import messaging, notification_inbox, outbox, polling
from services.runtime.http_ingress import HttpIngress
from services.runtime.server import ServiceRuntime
from services.runtime.server import main as runtime_main
from services.runtime.stripe_events import StripeEventsPass
from services.wallet import stripe_webhooks
from services.wallet.config import WalletSettings
from services.wallet.domain import Store
from services.wallet.payments import SandboxPaymentProvider
from services.wallet.ports import PaymentProvider, StoreVerifier
from services.wallet.service import WalletService
from services.wallet.servicer import WalletServicer
from services.wallet.store import WALLET_OUTBOX, PostgresWalletStore
from services.wallet.stores import (
    app_store,
    app_store_history,
    app_store_notifications,
    google_play,
    google_play_notifications,
)
from services.wallet.stripe_payments import StripePaymentProvider, StripeSettings
from services.wallet.stripe_webhooks import StripeWebhooks

MIGRATIONS = Path(__file__).parent / "migrations"
RAIL_NOTIFICATIONS = notification_inbox.NotificationInbox("rail_notifications")
# The gifts service's batches of spends are never shed: each carries gifts that were already accepted.
UNSHED_METHODS = frozenset({"/coinstream.wallet.v1.WalletService/SpendCoinsBatch"})


async def main() -> None:
    settings = WalletSettings()
    runtime = ServiceRuntime(settings, unshed_methods=UNSHED_METHODS)
    pool = runtime.use_database(MIGRATIONS)
    nc = runtime.use_nats()
    http = runtime.use_http()  # the stores' and Stripe's notifications and its health
    # WALLET drops events nobody is interested in: payouts' consumer is declared before the first publish.
    runtime.on_startup(lambda: messaging.ensure_wallet_events_consumer(nc, settings.nats_stream_replicas))
    relay = outbox.OutboxRelay(pool, nc.jetstream(), WALLET_OUTBOX, settings.wallet_relay_interval_seconds)
    stores: dict[Store, StoreVerifier] = {}
    app_store_settings = app_store.AppStoreSettings()
    app_store_verifier = app_store.app_store_verifier(app_store_settings) if app_store_settings.enabled else None
    if app_store_verifier is not None:
        stores[Store.APP_STORE] = app_store_verifier
    play_api = google_play_api(settings.google_play) if settings.google_play.enabled else None
    if play_api is not None:
        stores[Store.GOOGLE_PLAY] = google_play.GooglePlayVerifier(
            play_api, accept_test_purchases=settings.accepts_test_purchases
        )
    payments, serve_rail = payment_provider(settings)
    wallet = WalletService(
        PostgresWalletStore(pool),
        payments,
        settings.wallet_payment_timeout_seconds,
        settings.batch_policy(),
        settings.decline_limits(),
        on_event_queued=relay.wake,
        terms_version=settings.terms_version,
        stores=stores,
        store_products=settings.store_products,
    )
    serve_rail(runtime, http, wallet)
    servicer = WalletServicer(wallet)
    if app_store_verifier is not None:
        serve_app_store(app_store_settings, runtime, http, app_store_verifier, wallet)
    runtime.add_service(
        wallet_pb2_grpc.add_WalletServiceServicer_to_server,
        servicer,
        wallet_pb2.DESCRIPTOR.services_by_name["WalletService"].full_name,
    )

    runtime.add_worker("outbox_relay", relay.run_forever)
    runtime.add_periodic(
        "notification_retention",
        notification_inbox.RETENTION_PASS_INTERVAL_SECONDS,
        notification_inbox.retention_pass(pool, RAIL_NOTIFICATIONS, settings.notification_retention_days),
    )
    if payments is not None:
        runtime.add_periodic(
            "purchase_recovery",
            settings.wallet_recovery_interval_seconds,
            lambda: wallet.recover_pending_purchases(settings.wallet_recovery_age_seconds),
        )
    if stores:
        runtime.add_periodic(
            "store_finishing",
            settings.wallet_store_finish_interval_seconds,
            lambda: wallet.finish_store_purchases(settings.wallet_store_finish_age_seconds),
        )
    if play_api is not None:
        serve_google_play(settings.google_play, runtime, http, play_api, wallet)
    if settings.metrics_port:
        probes = {"outbox": lambda: outbox.measure_backlog(pool, WALLET_OUTBOX)}
        runtime.add_periodic("metrics", settings.metrics_poll_interval_seconds, lambda: polling.poll_once(probes))
    await runtime.run()


def serve_app_store(
    settings: app_store.AppStoreSettings,
    runtime: ServiceRuntime,
    http: HttpIngress,
    verifier: app_store.AppStoreVerifier,
    wallet: WalletService,
) -> None:
    """Its notifications endpoint, and with a Server API key the pass over the notifications Apple failed to send."""
    api = app_store.server_api(settings)  # the key's file is read now: a bad one stops the start, named
    notifications = app_store_notifications.AppStoreNotifications(
        wallet, verifier, app_store.consumption_reporter(settings, api)
    )
    http.add_endpoint(app_store_notifications.PATH, notifications)
    if api is None:
        return
    history = app_store_history.NotificationHistoryPass(
        api,
        notifications,
        window_ms=int(settings.history_window_hours * app_store_history.HOUR_MS),
        pages_per_pass=settings.history_pages_per_pass,
    )
    runtime.add_periodic("app_store_notification_history", settings.history_interval_seconds, history)


def google_play_api(settings: google_play.GooglePlaySettings) -> google_play.PlayDeveloperApi:
    """The Play Developer API with the service account's key (read now: a bad file stops the process, naming its
    setting; the key itself is never logged)."""
    credentials = google_play.load_credentials(settings.service_account_file, settings.env_name("service_account_file"))
    return google_play.PlayDeveloperApi(
        credentials, settings.package_name, settings.api_url, settings.api_timeout_seconds
    )


def serve_google_play(
    settings: google_play.GooglePlaySettings,
    runtime: ServiceRuntime,
    http: HttpIngress,
    api: google_play.PlayDeveloperApi,
    wallet: WalletService,
) -> None:
    """Its real-time developer notifications endpoint and the pass over its voided purchases."""
    tokens = google_play_notifications.PushTokenVerifier(
        google_play_notifications.GoogleCerts(settings.certs_url),
        settings.push_audience,
        settings.push_service_account_email,
    )
    http.add_endpoint(
        google_play_notifications.PATH,
        google_play_notifications.GooglePlayNotifications(wallet, tokens, settings.package_name),
    )
    voided = google_play.VoidedPurchasesPass(
        api,
        wallet,
        pages_per_pass=settings.voided_pages_per_pass,
        overlap_ms=int(settings.voided_overlap_seconds * 1000),
    )
    runtime.add_periodic("google_play_voided_purchases", settings.voided_interval_seconds, voided)


def payment_provider(
    settings: WalletSettings,
) -> tuple[PaymentProvider | None, Callable[[ServiceRuntime, HttpIngress, WalletService], None]]:
    """COINSTREAM_PAYMENT_PROVIDER's provider (None: app stores only), and what it adds once the wallet exists
    (Stripe: its webhooks and the catch-up pass over its events). Stripe's secrets are read now: a missing file
    stops the start, named."""
    if settings.payment_provider == "sandbox":
        return SandboxPaymentProvider(), lambda runtime, http, wallet: None
    if settings.payment_provider == "none":
        return None, lambda runtime, http, wallet: None
    problems = settings.stripe_problems(production=False)
    if problems:
        raise SystemExit("COINSTREAM_PAYMENT_PROVIDER=stripe cannot start:\n- " + "\n- ".join(problems))
    stripe_settings = StripeSettings()
    signing_secret = stripe_settings.webhook_secret()
    client = stripe_settings.client()

    def serve_stripe(runtime: ServiceRuntime, http: HttpIngress, wallet: WalletService) -> None:
        http.add_endpoint(stripe_webhooks.PATH, StripeWebhooks(wallet, signing_secret).handle)
        events = StripeEventsPass(
            client,
            stripe_webhooks.ACTED_ON,
            lambda event: stripe_webhooks.apply_event(wallet, event),
            window_seconds=stripe_settings.events_window_hours * 3600,
            pages_per_pass=stripe_settings.events_pages_per_pass,
            name="stripe",
        )
        runtime.add_periodic("stripe_events", stripe_settings.events_interval_seconds, events)

    return StripePaymentProvider(client), serve_stripe


if __name__ == "__main__":
    runtime_main(main, WalletSettings, MIGRATIONS)
