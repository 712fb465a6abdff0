"""The payouts service: python -m services.payouts serves, python -m services.payouts migrate only migrates."""

from __future__ import annotations

from pathlib import Path

import structlog
from coinstream.payouts.v1 import payouts_pb2, payouts_pb2_grpc

from services.payouts.clawbacks import WalletEvents, recover_waiting_clawbacks
from services.payouts.config import PayoutsSettings
from services.payouts.dead_letters import measure_dead_letters
from services.payouts.domain import WithdrawalPolicy
from services.payouts.maturity import MaturityWorker
from services.payouts.payout_provider import SandboxPayoutProvider
from services.payouts.payout_worker import PayoutWorker, measure_withdrawals
from services.payouts.ports import PayoutProvider, PayoutsStore
from services.payouts.rails import paypal, stripe_connect
from services.payouts.service import PayoutsService
from services.payouts.servicer import PayoutsServicer
from services.payouts.settlement import (
    Settlement,
    SettlementConsumer,
    declare_settlement_consumer,
    measure_consumer,
)
from services.payouts.store import PAYOUTS_OUTBOX, PostgresPayoutsStore
from services.payouts.wallet_events import WalletEventsConsumer
from services.reconcile.periodic import reconcile_once
from services.reconcile.reconciler import ReconcileSettings
from services.runtime import messaging, notification_inbox, outbox, polling
from services.runtime.http_ingress import HttpIngress
from services.runtime.server import ServiceRuntime
from services.runtime.server import main as runtime_main

MIGRATIONS = Path(__file__).parent / "migrations"
PAYOUT_NOTIFICATIONS = notification_inbox.NotificationInbox("payout_notifications")
log = structlog.get_logger()


def withdrawal_policy(settings: PayoutsSettings) -> WithdrawalPolicy:
    return WithdrawalPolicy(
        minimum_diamonds=settings.payouts_minimum_withdrawal_diamonds,
        daily_cap_diamonds=settings.payouts_daily_withdrawal_cap_diamonds,
        value_per_1000_minor=settings.payouts_diamond_value_per_1000_minor,
        currency_code=settings.payouts_currency_code,
    )


def warn_of_an_allowed_short_hold(settings: PayoutsSettings) -> None:
    if settings.environment == "production" and settings.diamond_hold_is_short:
        # Exempted on purpose (COINSTREAM_ALLOW_SHORT_DIAMOND_HOLD): said at every start, for whoever reads logs.
        log.warning(
            "short_diamond_hold_allowed",
            setting="COINSTREAM_ALLOW_SHORT_DIAMOND_HOLD",
            hold_seconds=settings.diamond_hold_seconds,
        )


def payout_provider(
    settings: PayoutsSettings, store: PayoutsStore, http: HttpIngress, runtime: ServiceRuntime
) -> PayoutProvider:
    """The configured provider, and its webhook endpoint on the HTTP port (the sandbox has none); Stripe's also its
    catch-up pass over its events. Secrets are read now: a missing or unreadable one stops the start, naming its
    setting."""
    timeout = settings.payouts_provider_timeout_seconds
    if settings.payout_provider == "stripe_connect":
        stripe_settings = stripe_connect.StripeConnectSettings()
        http.add_endpoint(
            stripe_connect.WEBHOOK_PATH, stripe_connect.StripeWebhook.from_settings(store, stripe_settings)
        )
        events = stripe_connect.events_pass(store, stripe_settings, timeout)
        runtime.add_periodic("stripe_connect_events", stripe_settings.events_interval_seconds, events)
        return stripe_connect.StripeConnectProvider.from_settings(stripe_settings, timeout)
    if settings.payout_provider == "paypal":
        paypal_settings = paypal.PayPalSettings()
        http.add_endpoint(paypal.WEBHOOK_PATH, paypal.PayPalWebhook.from_settings(store, paypal_settings, timeout))
        return paypal.PayPalPayoutProvider.from_settings(paypal_settings, timeout)
    return SandboxPayoutProvider(settings.payouts_sandbox_settle_seconds)


async def main() -> None:
    settings = PayoutsSettings()
    runtime = ServiceRuntime(settings)  # configures logging
    warn_of_an_allowed_short_hold(settings)
    pool = runtime.use_database(MIGRATIONS)
    store = PostgresPayoutsStore(pool)
    http = runtime.use_http()  # the payout providers' webhooks and its health
    provider = payout_provider(settings, store, http, runtime)
    payouts = PayoutsService(
        store,
        withdrawal_policy(settings),
        provider,
        provider_timeout_seconds=settings.payouts_provider_timeout_seconds,
    )
    nc = runtime.use_nats()
    js = nc.jetstream()

    async def adopt_configured_rate() -> None:
        await payouts.adopt_configured_rate(settings.payouts_rate_numerator, settings.payouts_rate_denominator)

    # Before anything settles: every credit must name the rate version in force.
    runtime.on_startup(adopt_configured_rate)
    runtime.on_startup(
        lambda: declare_settlement_consumer(
            nc, settings.payouts_settlement_ack_wait_seconds, settings.nats_stream_replicas
        )
    )
    # The wallet's reversals and freezes: declared here too, so that a payouts started first holds them.
    # With settlement's ack_wait: how long an event a crashed replica had fetched waits before another gets it.
    runtime.on_startup(
        lambda: messaging.ensure_wallet_events_consumer(
            nc, settings.nats_stream_replicas, settings.payouts_settlement_ack_wait_seconds
        )
    )
    runtime.on_startup(
        lambda: messaging.ensure_stream(nc, messaging.PAYOUTS_STREAM_CONFIG, settings.nats_stream_replicas)
    )
    relay = outbox.OutboxRelay(pool, js, PAYOUTS_OUTBOX, settings.payouts_relay_interval_seconds)
    wallet_events = WalletEventsConsumer(
        js,
        WalletEvents(store, on_event_queued=relay.wake),
        batch_size=settings.payouts_wallet_events_batch_size,
        fetch_timeout_seconds=settings.payouts_settlement_fetch_timeout_seconds,
    )
    settlement = SettlementConsumer(
        js,
        Settlement(store, hold_seconds=settings.diamond_hold_seconds),
        batch_size=settings.payouts_settlement_batch_size,
        fetch_timeout_seconds=settings.payouts_settlement_fetch_timeout_seconds,
        max_deliveries=settings.payouts_settlement_max_deliveries,
    )
    payout_worker = PayoutWorker(
        store,
        provider,
        batch_size=settings.payouts_worker_batch_size,
        check_interval_seconds=settings.payouts_worker_interval_seconds,
        provider_timeout_seconds=settings.payouts_provider_timeout_seconds,
    )

    servicer = PayoutsServicer(payouts)
    runtime.add_service(
        payouts_pb2_grpc.add_PayoutServiceServicer_to_server,
        servicer,
        payouts_pb2.DESCRIPTOR.services_by_name["PayoutService"].full_name,
    )
    runtime.add_worker("settlement", settlement.run_forever)
    runtime.add_worker("wallet_events", wallet_events.run_forever)
    runtime.add_worker("outbox_relay", relay.run_forever)
    runtime.add_periodic("payouts", settings.payouts_worker_interval_seconds, payout_worker.process_due_withdrawals)
    maturity = MaturityWorker(store, batch_size=settings.payouts_maturity_batch_size)
    # Always running, also with no hold configured: credits held before a restart still mature.
    runtime.add_periodic("maturity", settings.payouts_maturity_interval_seconds, maturity.run_once)
    runtime.add_periodic(
        "notification_retention",
        notification_inbox.RETENTION_PASS_INTERVAL_SECONDS,
        notification_inbox.retention_pass(pool, PAYOUT_NOTIFICATIONS, settings.notification_retention_days),
    )
    runtime.add_periodic(
        "clawback_recovery", settings.payouts_maturity_interval_seconds, lambda: recover_waiting_clawbacks(store)
    )
    if settings.payouts_reconcile_interval_seconds > 0:
        reconcile_settings = ReconcileSettings()
        runtime.add_periodic(
            "reconcile", settings.payouts_reconcile_interval_seconds, lambda: reconcile_once(reconcile_settings)
        )
    if settings.metrics_port:
        probes = {
            "settlement_consumer": lambda: measure_consumer(js),
            "dead_letters": lambda: measure_dead_letters(js),
            "withdrawals": lambda: measure_withdrawals(store),
            "outbox": lambda: outbox.measure_backlog(pool, PAYOUTS_OUTBOX),
        }
        runtime.add_periodic("metrics", settings.metrics_poll_interval_seconds, lambda: polling.poll_once(probes))
    await runtime.run()


if __name__ == "__main__":
    runtime_main(main, PayoutsSettings, MIGRATIONS)
