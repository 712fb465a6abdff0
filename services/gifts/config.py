from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Self

from google.protobuf.duration_pb2 import Duration
from pydantic import Field, SecretStr, model_validator

from services.gifts import domain
from services.runtime.config import RuntimeSettings, migrating
from services.runtime.validation import Validator


@dataclass(frozen=True)
class MatchDurations:
    """How long a match may last (StartMatchRequest.duration; kept to the microsecond, as PostgreSQL keeps time)."""

    minimum: timedelta = domain.MIN_MATCH_DURATION
    maximum: timedelta = domain.MAX_MATCH_DURATION

    def check(self, check: Validator, duration: Duration) -> None:
        # Bounded before ToTimedelta(), which overflows past timedelta's range (a Duration reaches 10,000 years).
        well_formed = 0 <= duration.seconds <= self.maximum.total_seconds() and 0 <= duration.nanos < 1_000_000_000
        if not well_formed or not self.minimum <= duration.ToTimedelta() <= self.maximum:
            low, high = self.minimum.total_seconds(), self.maximum.total_seconds()
            check.fail("duration", f"must be {low:g}-{high:g} seconds")


@dataclass(frozen=True)
class StreamLimits:
    """SendGifts' flow control (see gifts_stream_max_in_flight below)."""

    max_in_flight: int = 256
    admission_wait_seconds: float = 10.0


class GiftsSettings(RuntimeSettings):
    gifts_database_url: str = "postgresql://postgres@127.0.0.1:55432/coinstream_gifts"
    gifts_port: int = Field(default=50052, ge=1, le=65535)
    # 0: no metrics endpoint.
    gifts_metrics_port: int = Field(default=0, ge=0, le=65535)
    gifts_wallet_address: str = "127.0.0.1:50051"
    # The credential for calls to the wallet (services/gifts/wallet_credential.py): a token file (reread when it
    # changes, for rotation), else a fixed token, else (HS256 shared-secret deployments only) one minted from
    # auth_secret. Every token must be for gifts_wallet_subject: the wallet keys gifts' spends under it.
    gifts_wallet_token_file: str = ""
    gifts_wallet_token: SecretStr = SecretStr("")
    gifts_wallet_subject: str = Field(default="coinstream-gifts", min_length=1, max_length=256)
    gifts_wallet_timeout_seconds: float = Field(default=5.0, gt=0, le=300)
    # Gifts left pending by a crash or a wallet outage are finished by a background pass.
    gifts_recovery_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    # Younger pending gifts are still in their SendGift call: the recovery pass leaves them to it.
    gifts_recovery_age_seconds: float = Field(default=30.0, gt=0, le=86_400)
    # The outbox relay also wakes at once after each completed gift; the interval only bounds a missed wake-up.
    gifts_relay_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    # The gifts a SendGift batch completes go out as one gifts.v1.gift_sent_batch message (GiftSentBatch), which
    # payouts settles; true publishes one gifts.v1.gift_sent per gift instead, as before, for deployments with other
    # consumers of that subject (at a JetStream message, delivery and ack per gift).
    gifts_per_gift_events: bool = False
    # Live gift feed: WatchStreamGifts calls per process, events buffered per watcher before it is ended as too
    # slow, and how long a too-slow call stuck writing to a client that stopped reading may linger.
    gifts_feed_max_watchers: int = Field(default=10_000, ge=1, le=1_000_000)
    # Per caller (subject of a user token); callers with the service role are bounded by the process's limit only.
    gifts_feed_max_watchers_per_caller: int = Field(default=20, ge=1, le=1_000_000)
    gifts_feed_watcher_queue_size: int = Field(default=1_000, ge=1, le=1_000_000)
    gifts_feed_stuck_watcher_grace_seconds: float = Field(default=5.0, gt=0, le=300)
    # Matches (StartMatch): the durations allowed — the contract's 30 s to 60 min by default — and how often the
    # finisher looks for matches past their end (a match finishes within about this long of its end).
    gifts_match_min_duration_seconds: float = Field(default=domain.MIN_MATCH_DURATION.total_seconds(), gt=0, le=86_400)
    gifts_match_max_duration_seconds: float = Field(default=domain.MAX_MATCH_DURATION.total_seconds(), gt=0, le=86_400)
    gifts_match_finish_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    # SendGifts: gifts answered at once per stream (beyond it the stream is not read, which slows the sender), and
    # how long a gift refused by the batch queue's admission (RATE_LIMITED) is resubmitted before that is its answer.
    gifts_stream_max_in_flight: int = Field(default=256, ge=1, le=100_000)
    gifts_stream_admission_wait_seconds: float = Field(default=10.0, ge=0, le=300)
    # ---- TLS to the wallet (services/gifts/wallet_client.py): a CA → a TLS channel, the wallet's certificate
    # verified against it; a client certificate and key as well → mutual TLS, for a wallet that requires them
    # (COINSTREAM_GRPC_TLS_CLIENT_CA_FILE there). The server name, when set, is the name checked in the wallet's
    # certificate instead of the address's host (e.g. an IP address or a load balancer's name).
    gifts_wallet_tls_ca_file: str = ""
    gifts_wallet_tls_cert_file: str = ""
    gifts_wallet_tls_key_file: str = ""
    gifts_wallet_tls_server_name: str = ""

    @model_validator(mode="after")
    def _wallet_token_when_minting_is_impossible(self) -> Self:
        # Our minted tokens are HS256; a wallet verifying RS256 would refuse them and every gift would stay pending.
        # (`migrate` calls no wallet.)
        if self.auth_algorithm != "HS256" and not self.wallet_credential_given and not migrating():
            raise ValueError(
                "COINSTREAM_GIFTS_WALLET_TOKEN_FILE (or COINSTREAM_GIFTS_WALLET_TOKEN) is required when"
                f" COINSTREAM_AUTH_ALGORITHM is {self.auth_algorithm}"
            )
        return self

    @model_validator(mode="after")
    def _match_durations_in_order(self) -> Self:
        if self.gifts_match_min_duration_seconds > self.gifts_match_max_duration_seconds:
            raise ValueError("COINSTREAM_GIFTS_MATCH_MIN_DURATION_SECONDS is above the maximum")
        return self

    @property
    def match_durations(self) -> MatchDurations:
        return MatchDurations(
            timedelta(seconds=self.gifts_match_min_duration_seconds),
            timedelta(seconds=self.gifts_match_max_duration_seconds),
        )

    def production_problems(self) -> list[str]:
        problems = super().production_problems() + self.nats_problems()
        if not self.wallet_credential_given:
            problems.append(
                "COINSTREAM_GIFTS_WALLET_TOKEN_FILE is unset: gifts would mint its own tokens with the verification key"
            )
        if not self.wallet_tls_enabled:
            problems.append("COINSTREAM_GIFTS_WALLET_TLS_CA_FILE is unset: calls to the wallet would be in clear text")
        return problems

    @property
    def wallet_credential_given(self) -> bool:
        return bool(self.gifts_wallet_token_file or self.gifts_wallet_token.get_secret_value())

    @property
    def stream_limits(self) -> StreamLimits:
        return StreamLimits(self.gifts_stream_max_in_flight, self.gifts_stream_admission_wait_seconds)

    @property
    def service_name(self) -> str:
        return "gifts"

    @property
    def database_url(self) -> str:
        return self.gifts_database_url

    @property
    def grpc_port(self) -> int:
        return self.gifts_port

    @property
    def metrics_port(self) -> int:
        return self.gifts_metrics_port

    # ---- TLS to the wallet: the checks of the settings above (RuntimeSettings runs them at start-up).
    def tls_setting_problems(self) -> list[str]:
        return super().tls_setting_problems() + self.missing_partners(
            [
                ("gifts_wallet_tls_cert_file", "gifts_wallet_tls_key_file", "a certificate needs its private key"),
                ("gifts_wallet_tls_key_file", "gifts_wallet_tls_cert_file", "a private key needs its certificate"),
                ("gifts_wallet_tls_cert_file", "gifts_wallet_tls_ca_file", "TLS to the wallet needs a CA to verify it"),
                ("gifts_wallet_tls_server_name", "gifts_wallet_tls_ca_file", "a server name is checked over TLS only"),
            ]
        )

    @property
    def wallet_tls_enabled(self) -> bool:
        return bool(self.gifts_wallet_tls_ca_file)

    # ---- end of TLS to the wallet
