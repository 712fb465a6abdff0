from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.runtime.config import RuntimeSettings
from services.wallet.domain import DeclineLimits
from services.wallet.stores.google_play import GooglePlaySettings


class WalletSettings(RuntimeSettings):
    wallet_database_url: str = "postgresql://postgres@127.0.0.1:55432/coinstream_wallet"
    wallet_port: int = Field(default=50051, ge=1, le=65535)
    # Providers' notifications and webhooks (services/runtime/http_ingress.py): development 50061.
    wallet_http_port: int = Field(default=50061, ge=1, le=65535)
    wallet_metrics_port: int = Field(default=0, ge=0, le=65535)  # 0: no metrics endpoint
    # Promotions are data (the promotions table; the contract's +5 % is the seeded default), not settings.
    # Purchases left pending by a crash or a provider outage are finished by a background pass: every interval, those
    # older than the age (younger ones may still be in their first charge). 0 would spin, or race that first charge.
    wallet_recovery_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    wallet_recovery_age_seconds: float = Field(default=30.0, gt=0, le=7 * 86_400)
    # How long a charge may take before the purchase is answered UNAVAILABLE (and left pending for a retry).
    wallet_payment_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    # Who charges PurchaseCoins (COINSTREAM_PAYMENT_PROVIDER): the sandbox (development; production refuses it unless
    # staging opts in), stripe (web purchases: COINSTREAM_STRIPE_*, stripe_payments.py; it also serves
    # /webhooks/stripe), or none (a deployment that sells only through the app stores: PurchaseCoins is refused).
    payment_provider: Literal["sandbox", "stripe", "none"] = Field(default="sandbox")
    # The outbox relay (wallet events: reversals, freezes) also wakes at once after each reversal or status change;
    # the interval only bounds a missed wake-up.
    wallet_relay_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    # Card testing: PurchaseCoins is refused RESOURCE_EXHAUSTED RATE_LIMITED once the account to be charged, or the
    # caller asking, has had this many payments declined in the last 24 h (0: no limit). Per account, whoever asks:
    # a card tester cannot get round it through a backend. Per caller, off by default: a backend buying for millions
    # of users sees legitimate declines all day, and any fixed daily count would either lock all of its users out on
    # a busy day, or never trip; the decline rate is watched instead (docs/operations.md, CoinstreamCardTesting).
    # Set it for callers that act for few accounts. Each purchase reads up to this many declines: hence the bounds.
    wallet_max_declines_per_account: int = Field(default=5, ge=0, le=1000)
    wallet_max_declines_per_caller: int = Field(default=0, ge=0, le=10_000)
    # The version of the terms of sale purchases are made under now, recorded with each (what a buyer agreed to).
    terms_version: str = Field(default="1", min_length=1, max_length=64)
    # Which coin package each app store product sells, as JSON: COINSTREAM_STORE_PRODUCTS='{"com.example.coins100":
    # "pkg_100"}'. A product it does not name is the package of the same id.
    store_products: dict[str, str] = Field(default_factory=dict)
    # Store purchases credited but not finished at their store (Google Play's consume) by a crash or an outage are
    # finished by a background pass: every interval, those older than the age.
    wallet_store_finish_interval_seconds: float = Field(default=60.0, gt=0, le=3600)
    wallet_store_finish_age_seconds: float = Field(default=60.0, gt=0, le=86_400)
    # Google Play purchases, COINSTREAM_GOOGLE_PLAY_* (services/wallet/stores/google_play.py): off by default.
    google_play: GooglePlaySettings = Field(default_factory=GooglePlaySettings)
    # gifts' channel reconnects every 5 minutes and so reaches wallet pods started since (RuntimeSettings).
    grpc_max_connection_age_seconds: float = Field(default=300.0, ge=0)

    def decline_limits(self) -> DeclineLimits:
        return DeclineLimits(self.wallet_max_declines_per_account, self.wallet_max_declines_per_caller)

    def production_problems(self) -> list[str]:
        return [
            *super().production_problems(),
            *self.nats_problems(),
            *self.sandbox_provider_problem("COINSTREAM_PAYMENT_PROVIDER", self.payment_provider),
            *self.google_play.production_problems(),
            *self.stripe_problems(production=True),
        ]

    def stripe_problems(self, *, production: bool) -> list[str]:
        """With COINSTREAM_PAYMENT_PROVIDER=stripe: its key and webhook secret files (StripeSettings)."""
        if self.payment_provider != "stripe":
            return []
        from services.wallet.stripe_payments import StripeSettings  # the stripe library only where it is used

        return StripeSettings().problems(production=production)

    @property
    def accepts_test_purchases(self) -> bool:
        """A store's test purchases (Google Play's license testers) buy coins in development and on staging only."""
        return self.environment == "development" or self.allow_sandbox_providers

    @property
    def service_name(self) -> str:
        return "wallet"

    @property
    def database_url(self) -> str:
        return self.wallet_database_url

    @property
    def grpc_port(self) -> int:
        return self.wallet_port

    @property
    def metrics_port(self) -> int:
        return self.wallet_metrics_port

    @property
    def http_port(self) -> int:
        return self.wallet_http_port
