"""Stripe Connect payouts: a withdrawal is a Transfer from the platform's balance to the creator's connected account
(the creator's payout destination, "acct_…"), with the official `stripe` library's async client.

- submit: POST /v1/transfers (amount in minor units, currency, destination, transfer_group and metadata.withdrawal_id
  = the withdrawal id), with Idempotency-Key = the withdrawal id. A transfer lands in the connected account's balance
  when it is created, so a created transfer is PAID; a refusal (400/402/403: no such account, not enabled) is FAILED;
  anything else (a timeout, 429, 5xx, our own key refused) leaves the outcome unknown: the worker asks later.
- resume (the answer was lost): the transfers of transfer_group = the withdrawal id, and a submission again (same
  key) only if there is none. Stripe keeps idempotency keys for 24 hours only, so it is this lookup, not a
  resubmission, that answers after a long outage.
- status: the transfer retrieved; a reversed one is FAILED (the money came back).
- webhooks (POST /webhooks/stripe): verified by `StripeClient.construct_event` (HMAC-SHA256, 300 s tolerance);
  `transfer.reversed` gives a paid withdrawal's diamonds back, `transfer.created` / `transfer.updated` settle a
  submitted one whose answer was lost. `payout.paid / failed / canceled` are the connected account's own payouts to
  its bank, of its whole balance: a failed one leaves the money in the creator's Stripe balance, not ours, so they are
  recorded and change nothing.
- the catch-up pass (events_pass, services/runtime/stripe_events.py): the events of ACTED_ON listed from Stripe's
  API, applied by the webhook's own apply_event, for those whose webhook never arrived (Stripe gives up after 3
  days)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import stripe
import structlog
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.payouts import domain
from services.payouts.payout_notices import NoticeOutcome, apply_payout_notice
from services.payouts.ports import PayoutResult, PayoutsStore, PayoutState
from services.payouts.rails.secrets import RailSettingError, missing_files, read_secret_file
from services.runtime import stripe_events
from services.runtime.http_ingress import Answer, Rejected, Unsigned
from services.runtime.stripe_events import UnreadableEvent

log = structlog.get_logger()

CONNECTED_ACCOUNT = re.compile(r"^acct_[A-Za-z0-9]{1,64}$")
# Stripe answers these as final refusals of the transfer itself (bad destination, account not enabled, card-like
# declines); AuthenticationError (our key) and RateLimitError are ours to fix or wait out, so the outcome stays unknown.
REFUSALS = (stripe.InvalidRequestError, stripe.PermissionError, stripe.CardError)
WEBHOOK_PATH = "/webhooks/stripe"
STRIPE_API = "https://api.stripe.com"
# The event types the webhook acts on: the catch-up pass lists these (payouts to banks are only recorded).
ACTED_ON = ("transfer.created", "transfer.updated", "transfer.reversed")


class StripeConnectSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="COINSTREAM_STRIPE_CONNECT_", extra="ignore", hide_input_in_errors=True
    )

    # The platform's secret key (sk_live_…/rk_live_… with Transfers write) and the webhook endpoint's signing secret
    # (whsec_…), each in a file.
    secret_key_file: str = ""
    webhook_secret_file: str = ""
    # Stripe's API; the tests point it at a loopback fake.
    api_base: str = STRIPE_API
    # How old a webhook's signed timestamp may be (Stripe's default: replays of older captures are refused).
    webhook_tolerance_seconds: int = Field(default=300, gt=0, le=3600)
    # The catch-up pass over Stripe's events list (services/runtime/stripe_events.py): how often it sweeps, how far
    # back its first sweep after start-up goes (Stripe retries a webhook for 3 days and keeps events 30), and how
    # many pages of 100 events one pass reads before yielding.
    events_interval_seconds: float = Field(default=900.0, gt=0, le=86400)
    events_window_hours: int = Field(default=72, gt=0, le=720)
    events_pages_per_pass: int = Field(default=10, gt=0, le=100)

    def production_problems(self, *, staging: bool = False) -> list[str]:
        """staging: Stripe's test mode is allowed (test money: withdrawals would be PAID while nobody is paid)."""
        problems = missing_files(
            {
                "COINSTREAM_STRIPE_CONNECT_SECRET_KEY_FILE": self.secret_key_file,
                "COINSTREAM_STRIPE_CONNECT_WEBHOOK_SECRET_FILE": self.webhook_secret_file,
            }
        )
        if staging:
            return problems
        if self.api_base != STRIPE_API:
            problems.append(f"COINSTREAM_STRIPE_CONNECT_API_BASE is {self.api_base}: production talks to {STRIPE_API}")
        if self.secret_key_file and _is_a_test_key(self.secret_key_file):
            problems.append(
                "COINSTREAM_STRIPE_CONNECT_SECRET_KEY_FILE holds a test-mode key: withdrawals would be marked paid"
                " while nobody is (set COINSTREAM_ALLOW_SANDBOX_PROVIDERS=true only on staging)"
            )
        return problems


def _is_a_test_key(path: str) -> bool:
    """A key file that cannot be read is no test key here: reading it at start names that problem."""
    try:
        key = read_secret_file("COINSTREAM_STRIPE_CONNECT_SECRET_KEY_FILE", path)
    except RailSettingError:
        return False
    return key.startswith(("sk_test_", "rk_test_"))


def _client(settings: StripeConnectSettings, timeout_seconds: float) -> stripe.StripeClient:
    return stripe.StripeClient(
        read_secret_file("COINSTREAM_STRIPE_CONNECT_SECRET_KEY_FILE", settings.secret_key_file),
        base_addresses={"api": settings.api_base},
        http_client=stripe.HTTPXClient(timeout=timeout_seconds),
        max_network_retries=0,  # the payout worker retries, by asking first; the events pass at its next interval
    )


class StripeConnectProvider:
    name = domain.STRIPE_CONNECT_RAIL

    def __init__(self, client: stripe.StripeClient) -> None:
        self._transfers = client.v1.transfers

    @classmethod
    def from_settings(cls, settings: StripeConnectSettings, timeout_seconds: float) -> StripeConnectProvider:
        return cls(_client(settings, timeout_seconds))

    async def submit(
        self, *, withdrawal_id: str, destination: str, amount_minor: int, currency_code: str
    ) -> PayoutResult:
        if not CONNECTED_ACCOUNT.match(destination):
            return PayoutResult(PayoutState.FAILED, withdrawal_id, "the destination is not a Stripe connected account")
        try:
            transfer = await self._transfers.create_async(
                {
                    "amount": amount_minor,
                    "currency": currency_code.lower(),
                    "destination": destination,
                    "transfer_group": withdrawal_id,
                    "metadata": {"withdrawal_id": withdrawal_id},
                },
                {"idempotency_key": withdrawal_id},
            )
        except REFUSALS as refusal:
            # The code only (e.g. "account_invalid"): Stripe's message may quote the destination.
            return PayoutResult(PayoutState.FAILED, withdrawal_id, f"Stripe refused the transfer: {refusal.code}")
        return _result(transfer.to_dict())

    async def status(self, *, withdrawal_id: str, provider_reference: str) -> PayoutResult:
        transfer = await self._transfers.retrieve_async(provider_reference)
        return _result(transfer.to_dict())

    async def resume(
        self, *, withdrawal_id: str, destination: str, amount_minor: int, currency_code: str
    ) -> PayoutResult:
        """The transfer of the withdrawal's transfer group, or, if Stripe has none, the submission again (same key)."""
        found = await self._transfers.list_async({"transfer_group": withdrawal_id, "limit": 1})
        if found.data:
            return _result(found.data[0].to_dict())
        return await self.submit(
            withdrawal_id=withdrawal_id, destination=destination, amount_minor=amount_minor, currency_code=currency_code
        )

    async def cancel(self, *, withdrawal_id: str, destination: str, provider_reference: str | None) -> bool:
        # Never asked for a submitted one (they cannot be canceled); a pending one never reached Stripe.
        return provider_reference is None


def _result(transfer: Mapping[str, Any]) -> PayoutResult:
    if transfer.get("reversed"):
        return PayoutResult(PayoutState.FAILED, str(transfer["id"]), "the transfer was reversed")
    return PayoutResult(PayoutState.PAID, str(transfer["id"]))


# --- webhooks ---------------------------------------------------------------------------------------------------------


def notice_from_event(event: Mapping[str, Any]) -> domain.PayoutNotice:
    """A verified Stripe event as a payout notice: which withdrawal (the transfer's metadata, or its group), and what
    it means for it."""
    kind = str(event.get("type", ""))
    subject = event.get("data", {}).get("object", {})
    if not isinstance(subject, Mapping) or not event.get("id"):
        raise UnreadableEvent("not a Stripe event")
    withdrawal_id, outcome, reason = "", None, ""
    if subject.get("object") == "transfer":
        withdrawal_id = str((subject.get("metadata") or {}).get("withdrawal_id") or subject.get("transfer_group") or "")
        outcome, reason = _transfer_outcome(kind, subject)
    return domain.PayoutNotice(
        payout_provider=domain.STRIPE_CONNECT_RAIL,
        notification_id=str(event["id"]),
        kind=kind,
        withdrawal_id=withdrawal_id,
        outcome=outcome,
        reason=reason,
        provider_reference=str(subject.get("id") or ""),
    )


def _transfer_outcome(kind: str, transfer: Mapping[str, Any]) -> tuple[domain.PayoutOutcome | None, str]:
    if kind not in ("transfer.created", "transfer.updated", "transfer.reversed"):
        return None, ""
    if transfer.get("reversed"):  # reversed in full: every minor unit is back in the platform's balance
        return domain.PayoutOutcome.RETURNED, "the Stripe transfer was reversed"
    if kind == "transfer.reversed":
        # A partial reversal: the diamonds of a part are not a whole number in general; an operator settles it.
        log.warning("stripe_transfer_partly_reversed", amount_reversed=transfer.get("amount_reversed"))
        return None, ""
    return domain.PayoutOutcome.PAID, ""


async def apply_event(store: PayoutsStore, event: Mapping[str, Any]) -> str:
    """An authentic event's effect, once by its id (the webhook's, after its signature verified, and the catch-up
    pass's, for events read from Stripe's API): its outcome, "duplicate" for one applied before."""
    return (await apply_payout_notice(store, notice_from_event(event))).value


class StripeWebhook:
    """POST /webhooks/stripe: verified by the library, then applied once (payout_notices.py)."""

    def __init__(self, store: PayoutsStore, client: stripe.StripeClient, secret: str, tolerance_seconds: int) -> None:
        self._store, self._client, self._secret, self._tolerance = store, client, secret, tolerance_seconds

    @classmethod
    def from_settings(cls, store: PayoutsStore, settings: StripeConnectSettings) -> StripeWebhook:
        secret = read_secret_file("COINSTREAM_STRIPE_CONNECT_WEBHOOK_SECRET_FILE", settings.webhook_secret_file)
        # No API call is made with this client: it only parses events (no key needed for that).
        return cls(store, stripe.StripeClient("unused"), secret, settings.webhook_tolerance_seconds)

    async def __call__(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        signature = headers.get("stripe-signature")
        if not signature:
            raise Unsigned("no Stripe-Signature")
        try:
            self._client.construct_event(body, signature, self._secret, self._tolerance)
        except stripe.SignatureVerificationError:
            raise Unsigned("the Stripe-Signature does not verify") from None
        except ValueError:  # the signature verified but the body is no JSON: not from Stripe's event format
            raise Rejected("not a Stripe event") from None
        event = json.loads(body)
        if not isinstance(event, Mapping):
            raise Rejected("not a Stripe event")
        try:
            outcome = await apply_event(self._store, event)
        except UnreadableEvent as error:
            raise Rejected(str(error)) from None
        return Answer({"outcome": outcome}, duplicate=outcome == NoticeOutcome.DUPLICATE.value)


def events_pass(
    store: PayoutsStore, settings: StripeConnectSettings, timeout_seconds: float
) -> stripe_events.StripeEventsPass:
    """The catch-up pass over the events the webhook acts on (services/runtime/stripe_events.py)."""
    return stripe_events.StripeEventsPass(
        _client(settings, timeout_seconds),
        ACTED_ON,
        lambda event: apply_event(store, event),
        window_seconds=settings.events_window_hours * 3600,
        pages_per_pass=settings.events_pages_per_pass,
        name=domain.STRIPE_CONNECT_RAIL,
    )
