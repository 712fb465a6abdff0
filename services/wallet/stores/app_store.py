"""The Apple App Store rail, on Apple's own app-store-server-library: a StoreKit 2 signed transaction (a JWS whose x5c
chain ends at Apple's root) is verified offline against the configured roots, bundle id and environment, and becomes
the wallet's StoreProof; the same verifier decodes App Store Server Notifications V2 (app_store_notifications.py),
and the App Store Server API client answers Apple's consumption requests and reads its notification history.

The library is synchronous (its OCSP checks use requests): each verification runs in a worker thread, so that the
event loop never waits on Apple's OCSP responder.

Settings: COINSTREAM_APP_STORE_* (AppStoreSettings). The private key of the Server API is read from a file and never
logged; neither is a signed transaction or payload (they are bearer proofs of a purchase)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Literal, Self, TypeVar

from appstoreserverlibrary.api_client import AsyncAppStoreServerAPIClient
from appstoreserverlibrary.models.ConsumptionRequest import ConsumptionRequest
from appstoreserverlibrary.models.DeliveryStatus import DeliveryStatus
from appstoreserverlibrary.models.Environment import Environment
from appstoreserverlibrary.models.JWSTransactionDecodedPayload import JWSTransactionDecodedPayload
from appstoreserverlibrary.models.ResponseBodyV2DecodedPayload import ResponseBodyV2DecodedPayload
from appstoreserverlibrary.models.Type import Type
from appstoreserverlibrary.signed_data_verifier import SignedDataVerifier, VerificationException, VerificationStatus
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.runtime.errors import AppError, failed_precondition, unavailable
from services.wallet.domain import PurchaseConsumption, RedeemStorePurchase, Store, StoreProof

T = TypeVar("T")

# Apple's environments that sign nothing: the library skips the signature of their payloads entirely.
UNSIGNED_ENVIRONMENTS = frozenset({"Xcode", "LocalTesting"})
# Apple states prices and refund percentages in milliunits: 1,000 to the currency unit, 100,000 to 100 %.
PRICE_MILLIUNITS = 1000
REVOCATION_MILLIUNITS = 100_000
VERIFICATION_THREADS = 4
# The app sets StoreKit's appAccountToken to app_account_token(account id) when it buys (a UUID, as Apple requires):
# a transaction that carries one is then redeemed by that account only.
APP_ACCOUNT_TOKEN_NAMESPACE = uuid.UUID("064f85f0-3e8a-5648-8cca-c028e0f54639")  # uuid5(URL, coinstream:app-…-token)


def app_account_token(account_id: str) -> str:
    return str(uuid.uuid5(APP_ACCOUNT_TOKEN_NAMESPACE, account_id))


class AppStoreSettingError(ValueError):
    """A file the App Store settings name that cannot be used; the message names the setting."""


class AppStoreSettings(BaseSettings):
    """COINSTREAM_APP_STORE_*. Read at start; production (COINSTREAM_ENVIRONMENT=production) refuses an App Store that
    would accept unsigned or test purchases, or lacks what verifying and answering Apple needs."""

    model_config = SettingsConfigDict(
        env_prefix="COINSTREAM_APP_STORE_", extra="ignore", hide_input_in_errors=True, populate_by_name=True
    )

    enabled: bool = False
    # The app: its bundle id (every transaction and notification must name it) and its Apple ID (notifications of
    # the Production environment must name it; the library requires it there).
    bundle_id: str = ""
    app_apple_id: int = Field(default=0, ge=0)
    # Apple's environment the transactions must come from: Sandbox for TestFlight and development builds. Xcode and
    # LocalTesting are StoreKit testing in Xcode, whose payloads are not signed at all.
    environment: Literal["Production", "Sandbox", "Xcode", "LocalTesting"] = "Production"
    # Apple's root certificates (Apple Root CA - G3), DER or PEM, comma-separated paths.
    root_certificate_files: str = ""
    # OCSP of the chain's certificates at Apple (revoked signing certificates): None means on in Production only.
    # Offline, a chain is checked as of the payload's signedDate.
    online_checks: bool | None = None
    # The App Store Server API (consumption answers): an In-App Purchase key from App Store Connect, its id, the
    # issuer id, and the file of its private key (PEM, .p8). api_base_url replaces Apple's address (tests only).
    api_key_id: str = ""
    api_issuer_id: str = ""
    api_private_key_file: str = ""
    api_base_url: str = ""
    # Apple takes consumption information only with the customer's consent (customerConsented must be true): set
    # it when the terms of sale the buyers accept include that consent. Unset, CONSUMPTION_REQUESTs are recorded and
    # left unanswered (Apple then decides the refund without our data).
    customers_consent_to_consumption_data: bool = False
    # The pass over Get Notification History (app_store_history.py), with the Server API key: Apple stops retrying a
    # notification after a few days, so every interval the notifications it failed to deliver in the last window
    # (Apple keeps 180 days) are fetched, at most this many pages of 20 per pass.
    history_interval_seconds: float = Field(default=3600.0, gt=0, le=86_400)
    history_window_hours: float = Field(default=72.0, gt=0, le=180 * 24)
    history_pages_per_pass: int = Field(default=10, ge=1, le=100)

    # The service's own settings this one depends on (their usual names, without this prefix).
    service_environment: Literal["development", "production"] = Field(
        default="development", validation_alias="COINSTREAM_ENVIRONMENT"
    )
    allow_sandbox_providers: bool = Field(default=False, validation_alias="COINSTREAM_ALLOW_SANDBOX_PROVIDERS")

    @property
    def apple_environment(self) -> Environment:
        return Environment(self.environment)

    @property
    def online_checks_enabled(self) -> bool:
        return self.environment == "Production" if self.online_checks is None else self.online_checks

    @property
    def signs_payloads(self) -> bool:
        return self.environment not in UNSIGNED_ENVIRONMENTS

    @property
    def server_api_configured(self) -> bool:
        return bool(self.api_key_id and self.api_issuer_id and self.api_private_key_file)

    @classmethod
    def env_name(cls, field: str) -> str:
        return f"COINSTREAM_APP_STORE_{field}".upper()

    def problems(self) -> list[str]:
        """What an enabled App Store cannot run without, in any environment."""
        problems = []
        if not self.bundle_id:
            problems.append(f"{self.env_name('bundle_id')} is unset: every transaction must name this app")
        if self.signs_payloads and not self.root_certificate_files:
            problems.append(f"{self.env_name('root_certificate_files')} is unset: nothing to verify a chain against")
        if self.environment == "Production" and not self.app_apple_id:
            problems.append(f"{self.env_name('app_apple_id')} is unset: Production notifications must name it")
        return problems

    def production_problems(self) -> list[str]:
        """What a production deployment must not run with (COINSTREAM_ALLOW_SANDBOX_PROVIDERS lets a staging one
        take Apple's Sandbox, on purpose and visibly; never the unsigned environments)."""
        problems = []
        if not self.signs_payloads:
            # Not even staging: the library checks no signature at all there, so anyone could mint purchases.
            problems.append(
                f"{self.env_name('environment')} is {self.environment}, whose payloads are not signed: anyone could"
                " make up purchases (Xcode's StoreKit testing belongs to development)"
            )
        elif self.environment != "Production" and not self.allow_sandbox_providers:
            problems.append(
                f"{self.env_name('environment')} is {self.environment}, a test environment: it credits purchases"
                " nobody paid for (set COINSTREAM_ALLOW_SANDBOX_PROVIDERS=true only on a staging deployment)"
            )
        if not self.app_apple_id and self.environment != "Production":  # problems() names it for Production
            problems.append(f"{self.env_name('app_apple_id')} is unset")
        if not self.online_checks_enabled and not self.allow_sandbox_providers:
            problems.append(
                f"{self.env_name('online_checks')} is false: a revoked Apple signing certificate would still be trusted"
            )
        for field in ("api_key_id", "api_issuer_id", "api_private_key_file"):
            if not getattr(self, field):
                problems.append(
                    f"{self.env_name(field)} is unset: Apple's consumption requests cannot be answered, nor the"
                    " notifications it failed to deliver fetched"
                )
        if self.api_base_url:
            problems.append(
                f"{self.env_name('api_base_url')} is set: it sends the API key's tokens elsewhere than Apple"
            )
        return problems

    @model_validator(mode="after")
    def _refuse_what_cannot_run(self) -> Self:
        if not self.enabled:
            return self
        problems = self.problems()
        if self.service_environment == "production":
            problems += self.production_problems()
        if problems:
            raise ValueError(
                "the App Store rail (COINSTREAM_APP_STORE_ENABLED) refuses to start:\n- " + "\n- ".join(problems)
            )
        return self


# --- what Apple's transactions say, in the wallet's terms ---------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


# ISO 4217 minor-unit exponents other than 2 (most currencies have 2 decimals).
CURRENCY_EXPONENTS = {
    **dict.fromkeys(_words("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"), 0),
    **dict.fromkeys(_words("BHD IQD JOD KWD LYD OMR TND"), 3),
}
CURRENCY_CODE = re.compile(r"[A-Z]{3}")

# Apple's storefronts are ISO 3166-1 alpha-3 codes (Kosovo: XKS); the wallet keeps alpha-2. One pair per storefront
# the App Store has; an unknown one becomes "" (not said).
STOREFRONT_COUNTRIES = dict(
    pair.split(":")
    for pair in _words("""
    AFG:AF AGO:AO AIA:AI ALB:AL AND:AD ARE:AE ARG:AR ARM:AM ATG:AG AUS:AU AUT:AT AZE:AZ BEL:BE BEN:BJ BFA:BF BGR:BG
    BHR:BH BHS:BS BIH:BA BLR:BY BLZ:BZ BMU:BM BOL:BO BRA:BR BRB:BB BRN:BN BTN:BT BWA:BW CAF:CF CAN:CA CHE:CH CHL:CL
    CHN:CN CIV:CI CMR:CM COD:CD COG:CG COL:CO CPV:CV CRI:CR CYM:KY CYP:CY CZE:CZ DEU:DE DMA:DM DNK:DK DOM:DO DZA:DZ
    ECU:EC EGY:EG ESP:ES EST:EE ETH:ET FIN:FI FJI:FJ FRA:FR FSM:FM GAB:GA GBR:GB GEO:GE GHA:GH GMB:GM GNB:GW GRC:GR
    GRD:GD GTM:GT GUY:GY HKG:HK HND:HN HRV:HR HUN:HU IDN:ID IND:IN IRL:IE IRQ:IQ ISL:IS ISR:IL ITA:IT JAM:JM JOR:JO
    JPN:JP KAZ:KZ KEN:KE KGZ:KG KHM:KH KNA:KN KOR:KR KWT:KW LAO:LA LBN:LB LBR:LR LBY:LY LCA:LC LKA:LK LTU:LT LUX:LU
    LVA:LV MAC:MO MAR:MA MDA:MD MDG:MG MDV:MV MEX:MX MKD:MK MLI:ML MLT:MT MMR:MM MNE:ME MNG:MN MOZ:MZ MRT:MR MSR:MS
    MUS:MU MWI:MW MYS:MY NAM:NA NER:NE NGA:NG NIC:NI NLD:NL NOR:NO NPL:NP NRU:NR NZL:NZ OMN:OM PAK:PK PAN:PA PER:PE
    PHL:PH PLW:PW PNG:PG POL:PL PRT:PT PRY:PY PSE:PS QAT:QA ROU:RO RUS:RU RWA:RW SAU:SA SEN:SN SGP:SG SLB:SB SLE:SL
    SLV:SV SRB:RS STP:ST SUR:SR SVK:SK SVN:SI SWE:SE SWZ:SZ SYC:SC TCA:TC TCD:TD THA:TH TJK:TJ TKM:TM TON:TO TTO:TT
    TUN:TN TUR:TR TWN:TW TZA:TZ UGA:UG UKR:UA URY:UY USA:US UZB:UZ VCT:VC VEN:VE VGB:VG VNM:VN VUT:VU XKS:XK YEM:YE
    ZAF:ZA ZMB:ZM ZWE:ZW
    """)
)


def price_paid_minor(price_milliunits: int | None, currency_code: str | None) -> tuple[int | None, str]:
    """Apple's price (milliunits of the currency) in the currency's minor units, rounded half up to a whole one
    (Apple's prices have no fraction of a minor unit; integers throughout); (None, "") when Apple did not say."""
    if price_milliunits is None or currency_code is None or not CURRENCY_CODE.fullmatch(currency_code):
        return None, ""
    if price_milliunits < 0:
        raise not_verified("a negative price")
    scaled = price_milliunits * 10 ** CURRENCY_EXPONENTS.get(currency_code, 2)
    return (scaled + PRICE_MILLIUNITS // 2) // PRICE_MILLIUNITS, currency_code


def storefront_country(storefront: str | None) -> str:
    return STOREFRONT_COUNTRIES.get(storefront or "", "")


def transaction_proof(transaction: JWSTransactionDecodedPayload) -> StoreProof:
    """A verified transaction as the wallet credits it: a consumable (coins are), one of it, neither refunded nor
    revoked. Finishing is the app's (StoreKit's Transaction.finish()): nothing to do at the store afterwards."""
    if transaction.revocationDate is not None:
        raise not_verified("the transaction was refunded or revoked")
    if transaction.rawType != Type.CONSUMABLE.value:
        raise not_verified(f"a product of type {transaction.rawType!r} is no coin package (they are consumables)")
    if not transaction.transactionId or not transaction.productId:
        raise not_verified("the transaction has no transactionId or productId")
    if transaction.quantity not in (None, 1):
        raise not_verified(f"a quantity of {transaction.quantity}: a transaction buys one coin package")
    price_minor, currency_code = price_paid_minor(transaction.price, transaction.currency)
    return StoreProof(
        store=Store.APP_STORE,
        transaction_id=transaction.transactionId,
        product_id=transaction.productId,
        price_paid_minor=price_minor,
        currency_code=currency_code,
        storefront_country=storefront_country(transaction.storefront),
        needs_finishing=False,
    )


def revoked_share(transaction: JWSTransactionDecodedPayload) -> Fraction:
    """What a refund or revocation takes back of the purchase: Apple's revocationPercentage (milliunits, a partial
    refund), else all of it."""
    percentage = transaction.revocationPercentage
    if percentage is None:
        return Fraction(1)
    if not 0 < percentage <= REVOCATION_MILLIUNITS:
        raise not_verified(f"a revocationPercentage of {percentage} (milliunits, 1 to 100,000)")
    return Fraction(percentage, REVOCATION_MILLIUNITS)


def consumption_request(consumption: PurchaseConsumption | None) -> ConsumptionRequest:
    """Apple's ConsumptionRequest for a purchase's consumption (None: no coins were ever credited for it). No refund
    preference: the provenance is stated, the decision left to Apple (a refund is reversed here either way)."""
    if consumption is None:
        return ConsumptionRequest(
            customerConsented=True, sampleContentProvided=False, deliveryStatus=DeliveryStatus.UNDELIVERED_OTHER
        )
    return ConsumptionRequest(
        customerConsented=True,
        sampleContentProvided=False,
        deliveryStatus=DeliveryStatus.DELIVERED,
        consumptionPercentage=consumption.used_milliunits,
    )


def not_verified(why: str, what: str = "the App Store transaction") -> AppError:
    return failed_precondition("PAYMENT_VERIFICATION_FAILED", f"{what} is refused: {why}")


# --- the verifier -------------------------------------------------------------------------------------------------


class AppStoreVerifier:
    """ports.StoreVerifier for the App Store, and the decoder of its notifications: everything Apple signed goes
    through the library's SignedDataVerifier, unmodified."""

    def __init__(self, verifier: SignedDataVerifier) -> None:
        self._verifier = verifier
        # Threads of its own: an OCSP check that hangs (up to the library's own timeouts) must not hold the event
        # loop's default executor, which other rails (Google Play's API calls) share. Bounded: verifications past
        # these wait their turn, and the redeem's timeout answers UNAVAILABLE.
        self._threads = ThreadPoolExecutor(max_workers=VERIFICATION_THREADS, thread_name_prefix="app-store-verify")

    async def verify(self, redeem: RedeemStorePurchase) -> StoreProof:
        payload = await self.transaction(redeem.signed_transaction)
        token = payload.appAccountToken
        if token and token.lower() != app_account_token(redeem.account_id):
            # The app bought it for another account: a leaked signed transaction is no one else's to redeem.
            raise failed_precondition("PAYMENT_VERIFICATION_FAILED", "the App Store transaction is another account's")
        return transaction_proof(payload)

    async def finish(self, proof: StoreProof) -> None:
        """Nothing: a StoreKit 2 transaction is finished by the app, once it sees the coins credited."""

    async def transaction(self, signed_transaction: str) -> JWSTransactionDecodedPayload:
        """A signed transaction, verified: Apple's chain and signature, this app's bundle id, the environment."""
        verify = self._verifier.verify_and_decode_signed_transaction
        return await self._verified(verify, signed_transaction, "the App Store transaction")

    async def notification(self, signed_payload: str) -> ResponseBodyV2DecodedPayload:
        """A notification's signedPayload, verified: the chain and signature, bundle id, app id and environment."""
        verify = self._verifier.verify_and_decode_notification
        return await self._verified(verify, signed_payload, "the App Store notification")

    async def _verified(self, verify: Callable[[str], T], signed: str, what: str) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, verify, signed)
        except VerificationException as error:
            if error.status is VerificationStatus.RETRYABLE_VERIFICATION_FAILURE:  # Apple's OCSP did not answer
                raise unavailable(
                    "PAYMENT_PROVIDER_UNAVAILABLE", "Apple's certificate status service did not answer; retry later"
                ) from None
            raise not_verified(f"it does not verify ({error.status.name})", what) from None
        except Exception:  # noqa: BLE001 - signed by Apple's chain but not shaped as Apple's payloads are
            raise not_verified("it is not shaped as Apple's", what) from None


def app_store_verifier(settings: AppStoreSettings) -> AppStoreVerifier:
    return AppStoreVerifier(
        SignedDataVerifier(
            root_certificates(settings),
            settings.online_checks_enabled,
            settings.apple_environment,
            settings.bundle_id,
            settings.app_apple_id or None,
        )
    )


def root_certificates(settings: AppStoreSettings) -> list[bytes]:
    """Every certificate of the configured files, as DER (what the library takes); a file that holds none stops the
    process, naming the setting."""
    setting = settings.env_name("root_certificate_files")
    certificates: list[bytes] = []
    for path in (part.strip() for part in settings.root_certificate_files.split(",") if part.strip()):
        content = _read(setting, path)
        try:
            if b"-----BEGIN CERTIFICATE-----" in content:
                certificates += [cert.public_bytes(Encoding.DER) for cert in x509.load_pem_x509_certificates(content)]
            else:
                certificates.append(x509.load_der_x509_certificate(content).public_bytes(Encoding.DER))
        except ValueError:
            raise AppStoreSettingError(f"{setting}: {path!r} holds no certificate (DER or PEM)") from None
    return certificates


def _read(setting: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise AppStoreSettingError(f"{setting}: cannot read {path!r}: {error.strerror or error}") from None


# --- the App Store Server API -------------------------------------------------------------------------------------


class AppStoreServerApi(AsyncAppStoreServerAPIClient):
    """Apple's client (its ES256 bearer tokens, signed with the In-App Purchase key), at another address when one is
    configured: a loopback fake in the tests."""

    def __init__(
        self, signing_key: bytes, key_id: str, issuer_id: str, bundle_id: str, environment: Environment, base_url: str
    ) -> None:
        super().__init__(signing_key, key_id, issuer_id, bundle_id, environment)
        self._configured_base_url = base_url.rstrip("/")

    def _get_full_url(self, path: str) -> str:
        return (self._configured_base_url or self._base_url) + path


class ConsumptionReporter:
    """Answers a CONSUMPTION_REQUEST: what the purchase's coins became, through Send Consumption Information (a PUT:
    sending it again is harmless)."""

    def __init__(self, api: AppStoreServerApi) -> None:
        self._api = api

    async def report(self, transaction_id: str, consumption: PurchaseConsumption | None) -> None:
        await self._api.send_consumption_information(transaction_id, consumption_request(consumption))


def consumption_reporter(
    settings: AppStoreSettings, api: AppStoreServerApi | None = None
) -> ConsumptionReporter | None:
    """None when consumption data may not be sent (no consent, no API key, or Xcode, which has no Server API). api:
    the client already made of these settings (server_api), if any."""
    if not settings.customers_consent_to_consumption_data:
        return None
    api = api or server_api(settings)
    return ConsumptionReporter(api) if api is not None else None


def server_api(settings: AppStoreSettings) -> AppStoreServerApi | None:
    """The App Store Server API with the In-App Purchase key (read now: a bad file stops the process, naming its
    setting); None without a key, or in Xcode, which has no Server API."""
    if not settings.server_api_configured or settings.environment == "Xcode":
        return None
    key = _read(settings.env_name("api_private_key_file"), settings.api_private_key_file)
    try:
        api = AppStoreServerApi(
            key,
            settings.api_key_id,
            settings.api_issuer_id,
            settings.bundle_id,
            settings.apple_environment,
            settings.api_base_url,
        )
    except (ValueError, TypeError):  # never the key's content in the message
        raise AppStoreSettingError(
            f"{settings.env_name('api_private_key_file')}: {settings.api_private_key_file!r} is no PEM private key"
        ) from None
    return api
