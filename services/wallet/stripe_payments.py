"""Web purchases through Stripe: ports.PaymentProvider on PaymentIntents, with Stripe's own library (its StripeClient
and async methods over httpx). PurchaseCoins' payment_token is a PaymentMethod id (pm_…) made by Stripe.js in the
buyer's browser; one call creates and confirms a PaymentIntent for the package's price, under the purchase id as its
Idempotency-Key, so a retry (or the recovery pass) after a lost answer gets the first one's PaymentIntent back, never
a second charge. Once the PaymentIntent's id is known (the purchase's store_transaction_id), the purchase's charge is
only ever retrieved: a pending one is asked for its state, not confirmed again.

Its webhooks (payment_intent.succeeded after 3-D Secure, refunds, disputes) are stripe_webhooks.py's; the catch-up pass
over its events list (the same effects, for events whose webhook never came) is services/runtime/stripe_events.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import stripe
import structlog
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.wallet.domain import STRIPE_RAIL
from services.wallet.ports import ChargeResult, ProviderUnavailable

log = structlog.get_logger()

# Decline codes Stripe advises not to tell the buyer (they would help a fraudster): answered as a plain decline.
UNTOLD_DECLINE_CODES = frozenset({"fraudulent", "lost_card", "stolen_card", "pickup_card", "merchant_blacklist"})
# Errors after which nobody knows whether the payment went through: the purchase stays pending, and is asked again.
UNKNOWN_OUTCOME_ERRORS: tuple[type[stripe.StripeError], ...] = (
    stripe.APIConnectionError,  # a timeout, a refused or dropped connection
    stripe.APIError,  # a 5xx, or a 409 while the first request with this key is still running
    stripe.RateLimitError,
    stripe.IdempotencyError,  # the key used with other parameters: nothing was done by this request
    stripe.AuthenticationError,  # our key (rotated, revoked): an operator fixes it, the purchases wait
    stripe.PermissionError,
)


class StripeSettingsError(ValueError):
    """A Stripe setting that cannot work, naming its environment variable (never a secret's value)."""


class StripeSettings(BaseSettings):
    """COINSTREAM_STRIPE_*: read when COINSTREAM_PAYMENT_PROVIDER=stripe. Secrets come from files (a Kubernetes
    Secret mounted as files), read at start-up."""

    model_config = SettingsConfigDict(env_prefix="COINSTREAM_STRIPE_", extra="ignore", hide_input_in_errors=True)

    # The secret API key (sk_live_… in production; sk_test_… against Stripe's test mode).
    secret_key_file: str = ""
    # The webhook endpoint's signing secret (whsec_…), as the Stripe dashboard shows it for /webhooks/stripe.
    webhook_secret_file: str = ""
    # Where the API is (empty: Stripe's own, https://api.stripe.com). The tests' loopback fake; refused in production.
    api_base_url: str = ""
    # One HTTP request's limit; the whole charge is also bounded by COINSTREAM_WALLET_PAYMENT_TIMEOUT_SECONDS.
    timeout_seconds: float = Field(default=8.0, gt=0, le=120)
    # The library's own retries of a connection error, 409 or 5xx, with the same Idempotency-Key.
    max_network_retries: int = Field(default=2, ge=0, le=5)
    # The catch-up pass over Stripe's events list (services/runtime/stripe_events.py): how often it sweeps, how far
    # back its first sweep after start-up goes (Stripe retries a webhook for 3 days and keeps events 30), and how
    # many pages of 100 events one pass reads before yielding.
    events_interval_seconds: float = Field(default=900.0, gt=0, le=86400)
    events_window_hours: int = Field(default=72, gt=0, le=720)
    events_pages_per_pass: int = Field(default=10, gt=0, le=100)

    @classmethod
    def env_name(cls, field: str) -> str:
        return f"{cls.model_config.get('env_prefix', '')}{field}".upper()

    def problems(self, *, production: bool) -> list[str]:
        """What stops the wallet from selling through Stripe, one line per setting to fix."""
        problems = [
            f"{self.env_name(field)}: {problem}"
            for field, prefix in (("secret_key_file", "sk_"), ("webhook_secret_file", "whsec_"))
            if (problem := _secret_file_problem(getattr(self, field), prefix))
        ]
        if production and self.api_base_url:
            problems.append(f"{self.env_name('api_base_url')} is set: production talks to Stripe's own API")
        if production and not problems and self.secret_key().startswith("sk_test_"):
            problems.append(f"{self.env_name('secret_key_file')} holds a test-mode key: it takes test cards")
        return problems

    def secret_key(self) -> str:
        return _read_secret(self.secret_key_file, self.env_name("secret_key_file"))

    def webhook_secret(self) -> str:
        return _read_secret(self.webhook_secret_file, self.env_name("webhook_secret_file"))

    def client(self) -> stripe.StripeClient:
        """A StripeClient on httpx (whose async client the *_async methods use), to this settings' API."""
        return stripe.StripeClient(
            self.secret_key(),
            base_addresses={"api": self.api_base_url} if self.api_base_url else None,
            http_client=stripe.HTTPXClient(timeout=self.timeout_seconds),
            max_network_retries=self.max_network_retries,
        )


def _secret_file_problem(path: str, prefix: str) -> str:
    if not path:
        return "unset"
    try:
        secret = _read_secret(path, "")
    except StripeSettingsError as error:
        return str(error)
    return "" if secret.startswith(prefix) else f"the file does not hold a {prefix}… secret"


def _read_secret(path: str, setting: str) -> str:
    try:
        # A Secret's file often ends with a newline an editor or `echo` added; it is not part of the secret.
        secret = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        # Neither message quotes the file's content.
        raise StripeSettingsError(f"{setting}={path}: cannot read it ({type(error).__name__})".lstrip("=")) from None
    if not secret:
        raise StripeSettingsError(f"{setting}={path}: the file is empty".lstrip("="))
    return secret


class StripePaymentProvider:
    rail = STRIPE_RAIL

    def __init__(self, client: stripe.StripeClient) -> None:
        self._intents = client.v1.payment_intents

    async def charge(
        self,
        *,
        purchase_id: str,
        account_id: str,
        payment_token: str,
        amount_minor: int,
        currency_code: str,
        rail_transaction_id: str | None = None,
    ) -> ChargeResult:
        try:
            if rail_transaction_id is not None:
                intent = await self._intents.retrieve_async(rail_transaction_id)
            else:
                intent = await self._create(purchase_id, account_id, payment_token, amount_minor, currency_code)
        except stripe.CardError as declined:
            return _card_declined(declined)
        except stripe.InvalidRequestError as refused:
            if rail_transaction_id is not None:  # our own PaymentIntent not found: nothing to decide on
                raise ProviderUnavailable(f"stripe refused a retrieve: {refused.code}") from None
            # The PaymentMethod is none of this account's (made up, or used up): the buyer's details are refused.
            return ChargeResult(False, "", f"payment method refused ({refused.code or 'invalid request'})")
        except UNKNOWN_OUTCOME_ERRORS as error:
            raise ProviderUnavailable(f"stripe: {type(error).__name__} (http {error.http_status})") from None
        return intent_outcome(
            intent.id,
            intent.status,
            _field(intent, "client_secret") or "",
            _error_code(_field(intent, "last_payment_error")),
        )

    async def _create(
        self, purchase_id: str, account_id: str, payment_token: str, amount_minor: int, currency_code: str
    ) -> stripe.PaymentIntent:
        """Creates and confirms the purchase's PaymentIntent, or gets the first one back under the same key. Stripe
        keeps a 5xx with its key too (for 24 h), so a PaymentIntent made by a request that then failed would never be
        named by asking again: it is looked for by its purchase id instead (search lags by up to a minute; until it
        shows, the purchase stays pending)."""
        params = _intent_params(purchase_id, account_id, payment_token, amount_minor, currency_code)
        try:
            return await self._intents.create_async(params, {"idempotency_key": purchase_id})
        except stripe.APIError as failed:
            found = await self._find(purchase_id) if (failed.http_status or 0) >= 500 else None
            if found is None:
                raise failed from None
            log.info("stripe_payment_intent_found_after_error", purchase_id=purchase_id, http_status=failed.http_status)
            return found

    async def _find(self, purchase_id: str) -> stripe.PaymentIntent | None:
        """The purchase's PaymentIntent by its metadata; None when search does not show it (yet) or fails (whatever
        it answers, the create's failure stands: the outcome stays unknown, never a decline)."""
        try:
            found = await self._intents.search_async({"query": f"metadata['purchase_id']:'{purchase_id}'"})
        except stripe.StripeError as error:
            log.warning("stripe_search_failed", purchase_id=purchase_id, error=type(error).__name__)
            return None
        return found.data[0] if found.data else None


def _intent_params(purchase_id: str, account_id: str, payment_token: str, amount_minor: int, currency_code: str) -> Any:
    return {
        "amount": amount_minor,
        "currency": currency_code.lower(),
        "payment_method": payment_token,
        "confirm": True,
        # A card payment stays on the buyer's page: 3-D Secure runs in Stripe.js with the client secret, so no
        # return_url is needed, and methods that would leave the page are not offered.
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
        # The purchase's webhooks find it by the PaymentIntent's id, or by this before that id is recorded.
        "metadata": {"purchase_id": purchase_id, "account_id": account_id},
    }


def intent_outcome(intent_id: str, status: str, client_secret: str, last_error_code: str) -> ChargeResult:
    """A PaymentIntent's state as the purchase's charge: succeeded is paid; requires_action waits for the buyer
    (3-D Secure) with the client secret to hand to Stripe.js; processing (and the states a confirmed card payment
    passes through) wait for Stripe's word; requires_payment_method (the card failed) and canceled are declined."""
    if status == "succeeded":
        return ChargeResult(True, intent_id, rail_transaction_id=intent_id)
    if status in ("requires_payment_method", "canceled"):
        reason = last_error_code or status
        return ChargeResult(False, intent_id, reason, rail_transaction_id=intent_id)
    secret = client_secret if status == "requires_action" else ""
    return ChargeResult(False, intent_id, pending=True, client_action_secret=secret, rail_transaction_id=intent_id)


def _card_declined(declined: stripe.CardError) -> ChargeResult:
    """A 402: the card was declined; the PaymentIntent it made (requires_payment_method) is recorded with it."""
    error = declined.error
    intent = _field(error, "payment_intent")
    intent_id: str | None = _field(intent, "id")
    decline_code = _field(error, "decline_code")
    reason = declined.code or "card_declined"
    if decline_code and decline_code not in UNTOLD_DECLINE_CODES and decline_code != reason:
        reason = f"{reason}: {decline_code}"
    return ChargeResult(False, intent_id or "", reason, rail_transaction_id=intent_id)


def _error_code(error: Any) -> str:
    """A PaymentIntent's last_payment_error as a decline reason (a code the buyer may be told)."""
    decline_code = _field(error, "decline_code")
    if decline_code in UNTOLD_DECLINE_CODES:
        decline_code = None
    return str(decline_code or _field(error, "code") or "")


def _field(stripe_object: Any, name: str) -> Any:
    """An optional field of a Stripe object (None when absent: Stripe objects raise AttributeError for a missing
    one, and omit what does not apply)."""
    return getattr(stripe_object, name, None) if stripe_object is not None else None
