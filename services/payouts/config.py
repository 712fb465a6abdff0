from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from services.payouts.rails.paypal import PayPalSettings
from services.payouts.rails.stripe_connect import StripeConnectSettings
from services.reconcile.reconciler import ReconcileSettings
from services.runtime.config import RuntimeSettings

# Upper bounds that keep every product within int64: a rate term times the largest gift, a withdrawal setting times
# the diamond value.
MAX_RATE_TERM = 1_000_000
MAX_WITHDRAWAL_SETTING = 10_000_000_000
# The shortest maturity hold production accepts unless told otherwise (COINSTREAM_ALLOW_SHORT_DIAMOND_HOLD): a
# chargeback reaches the payment provider weeks after the purchase, and only a hold keeps the diamonds bought with
# fraudulent coins from being withdrawn before it does. The production overlay and compose file ship 7 days.
MIN_PRODUCTION_DIAMOND_HOLD_SECONDS = 86_400


class PayoutsSettings(RuntimeSettings):
    payouts_database_url: str = "postgresql://postgres@127.0.0.1:55432/coinstream_payouts"
    payouts_port: int = Field(default=50053, ge=1, le=65535)
    # Providers' notifications and webhooks (services/runtime/http_ingress.py): development 50063.
    payouts_http_port: int = Field(default=50063, ge=1, le=65535)
    payouts_metrics_port: int = Field(default=0, ge=0, le=65535)  # 0: no metrics endpoint

    # Settlement rate (contract default 1 coin → 1 diamond). A change is recorded as a new rate version at start.
    payouts_rate_numerator: int = Field(default=1, gt=0, le=MAX_RATE_TERM)
    payouts_rate_denominator: int = Field(default=1, gt=0, le=MAX_RATE_TERM)

    # What diamonds are worth when withdrawn (contract default: 1,000 diamonds = 500 minor units = $5.00).
    payouts_diamond_value_per_1000_minor: int = Field(default=500, gt=0, le=1_000_000)
    payouts_currency_code: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    payouts_minimum_withdrawal_diamonds: int = Field(default=2000, gt=0, le=MAX_WITHDRAWAL_SETTING)
    payouts_daily_withdrawal_cap_diamonds: int = Field(default=200_000, gt=0, le=MAX_WITHDRAWAL_SETTING)

    # Settlement consumer: messages per batch (one database transaction each) and how long one fetch waits.
    # Bounded well under the consumer's max_ack_pending (20,000).
    payouts_settlement_batch_size: int = Field(default=500, gt=0, le=10_000)
    payouts_settlement_fetch_timeout_seconds: float = Field(default=1.0, gt=0, le=60)
    # The outbox relay (DiamondsClawedBack) also wakes at once after a reversal; the interval bounds the others.
    payouts_relay_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    # The wallet's events (reversals, freezes) pulled at once; each is applied in a transaction of its own.
    payouts_wallet_events_batch_size: int = Field(default=50, gt=0, le=1000)
    # JetStream redelivers a message not acked within this long (e.g. after a crash between commit and ack).
    payouts_settlement_ack_wait_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Deliveries after which a GiftSent that fails to settle on its own goes to the DEAD_LETTERS stream (an
    # unreadable one goes at once; an error of the database itself never dead-letters an event).
    payouts_settlement_max_deliveries: int = Field(default=5, ge=1, le=1000)

    # Maturity hold: diamonds from gifts stay pending this long before they can be withdrawn (0: at once).
    # Read from COINSTREAM_DIAMOND_HOLD_SECONDS. A change applies to gifts settled after the restart.
    diamond_hold_seconds: int = Field(default=0, ge=0, le=90 * 86_400)
    # Production mode with a hold under MIN_PRODUCTION_DIAMOND_HOLD_SECONDS, on purpose and visibly (a warning at every
    # start): a staging deployment, where testers withdraw what they have just gifted.
    allow_short_diamond_hold: bool = False
    # Maturity worker: how often it moves due credits pending → available, and how many per transaction.
    payouts_maturity_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    payouts_maturity_batch_size: int = Field(default=1000, gt=0, le=10_000)

    # Reconciliation (`coinstream reconcile`'s checks) run by payouts every this many seconds, its discrepancy count
    # exported as coinstream_reconcile_discrepancies; 0: off. It reads the wallet's and gifts' databases too
    # (COINSTREAM_WALLET_DATABASE_URL, COINSTREAM_GIFTS_DATABASE_URL), so it is opt-in.
    payouts_reconcile_interval_seconds: float = Field(default=0.0, ge=0, le=7 * 86_400)

    # Payout worker: how often it looks at pending withdrawals and how many it handles per pass.
    payouts_worker_interval_seconds: float = Field(default=1.0, gt=0, le=3600)
    payouts_worker_batch_size: int = Field(default=100, gt=0, le=10_000)
    payouts_provider_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Who pays withdrawals out (COINSTREAM_PAYOUT_PROVIDER): the sandbox, Stripe Connect (COINSTREAM_STRIPE_CONNECT_*)
    # or PayPal Payouts (COINSTREAM_PAYPAL_*), services/payouts/rails/. Each withdrawal records the provider it was
    # requested under, and only that provider's workers pay it. Production refuses the sandbox unless staging opts
    # in, and a real provider without its credentials.
    payout_provider: Literal["sandbox", "stripe_connect", "paypal"] = "sandbox"
    # How long the sandbox payout provider takes to pay a "sandbox:ok…" destination.
    payouts_sandbox_settle_seconds: float = Field(default=2.0, ge=0, le=86_400)

    @model_validator(mode="after")
    def _minimum_within_the_daily_cap(self) -> Self:
        if self.payouts_minimum_withdrawal_diamonds > self.payouts_daily_withdrawal_cap_diamonds:
            raise ValueError(
                f"{self.env_name('payouts_minimum_withdrawal_diamonds')} must not exceed"
                f" {self.env_name('payouts_daily_withdrawal_cap_diamonds')}: no withdrawal could be made"
            )
        return self

    def production_problems(self) -> list[str]:
        problems = [
            *super().production_problems(),
            *self.nats_problems(),
            *self.sandbox_provider_problem("COINSTREAM_PAYOUT_PROVIDER", self.payout_provider),
            *self.payout_rail_problems(),
            *self.short_hold_problem(),
        ]
        if self.payouts_reconcile_interval_seconds:  # it reads the other two databases
            problems += self.database_tls_problems(self.reconcile_database_urls())
        return problems

    def payout_rail_problems(self) -> list[str]:
        # A staging deployment (COINSTREAM_ALLOW_SANDBOX_PROVIDERS) may pay through a provider's test mode.
        staging = self.allow_sandbox_providers
        if self.payout_provider == "stripe_connect":
            return StripeConnectSettings().production_problems(staging=staging)
        if self.payout_provider == "paypal":
            return PayPalSettings().production_problems(staging=staging)
        return []

    @property
    def diamond_hold_is_short(self) -> bool:
        return self.diamond_hold_seconds < MIN_PRODUCTION_DIAMOND_HOLD_SECONDS

    def short_hold_problem(self) -> list[str]:
        if not self.diamond_hold_is_short or self.allow_short_diamond_hold:
            return []
        return [
            f"{self.env_name('diamond_hold_seconds')} is {self.diamond_hold_seconds}, under 24 h"
            f" ({MIN_PRODUCTION_DIAMOND_HOLD_SECONDS}): chargebacks arrive weeks after a purchase, and the hold keeps"
            " diamonds from fraudulent coins from being withdrawn at once (set"
            f" {self.env_name('allow_short_diamond_hold')}=true only on a staging deployment)"
        ]

    @staticmethod
    def reconcile_database_urls() -> dict[str, str]:
        """The other services' databases, which the periodic reconciliation reads (their own settings' names)."""
        urls = ReconcileSettings().urls()
        return {"COINSTREAM_WALLET_DATABASE_URL": urls["wallet"], "COINSTREAM_GIFTS_DATABASE_URL": urls["gifts"]}

    @property
    def service_name(self) -> str:
        return "payouts"

    @property
    def database_url(self) -> str:
        return self.payouts_database_url

    @property
    def grpc_port(self) -> int:
        return self.payouts_port

    @property
    def metrics_port(self) -> int:
        return self.payouts_metrics_port

    @property
    def http_port(self) -> int:
        return self.payouts_http_port
