"""The wallet, as the gifts service sees it: one grpc.aio channel per process, calls with a deadline and a service
token, and the wallet's answers sorted into accounts, spends, final refusals and "try again later"."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import structlog
from coinstream.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from services.gifts import domain
from services.gifts.config import GiftsSettings
from services.gifts.domain import Spend, SpendAsk
from services.gifts.wallet_credential import ServiceToken
from services.runtime import tls, tracing
from services.runtime.errors import AppError, unavailable

log = structlog.get_logger()

# Calls are spread over every address the wallet's name resolves to (a headless Service: one per pod), not pinned
# to the first: round_robin keeps a connection to each. The wallets close connections after a while
# (COINSTREAM_GRPC_MAX_CONNECTION_AGE_SECONDS), and the name is resolved again then, so new pods get calls too.
#
# A wallet going away (a restart, a rollout, a connection closed for its age) makes round_robin fail calls at once
# until it has reconnected: calls wait for a ready connection instead (wait_for_ready, within their deadline), and
# reconnect attempts are at most a second apart (gRPC's default backoff grows to 120 s), so a wallet back from a
# restart is used within a second.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
]

# The calls' full names, as their client spans are named (the server spans have the same names).
GET_ACCOUNT = "/coinstream.wallet.v1.WalletService/GetAccount"
SPEND_COINS_BATCH = "/coinstream.wallet.v1.WalletService/SpendCoinsBatch"


@dataclass(frozen=True)
class WalletTls:
    credentials: grpc.ChannelCredentials
    # Checked in the wallet's certificate instead of the address's host ("" = the host).
    server_name: str = ""


def wallet_tls(settings: GiftsSettings) -> WalletTls | None:
    """COINSTREAM_GIFTS_WALLET_TLS_*: None for a plaintext channel (development). Files are read now, so that a bad
    one stops the start naming its setting."""
    ca = tls.setting_file(settings, "gifts_wallet_tls_ca_file")
    if ca is None:
        return None
    credentials = tls.channel_credentials(
        ca,
        tls.setting_file(settings, "gifts_wallet_tls_cert_file"),
        tls.setting_file(settings, "gifts_wallet_tls_key_file"),
    )
    return WalletTls(credentials, settings.gifts_wallet_tls_server_name)


def wallet_channel(address: str, channel_tls: WalletTls | None) -> grpc.aio.Channel:
    if channel_tls is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    options = list(CHANNEL_OPTIONS)
    if channel_tls.server_name:
        options.append(("grpc.ssl_target_name_override", channel_tls.server_name))
    return grpc.aio.secure_channel(address, channel_tls.credentials, options=options)


class WalletClient:
    """ports.Wallet over gRPC."""

    def __init__(
        self, address: str, token: ServiceToken, timeout_seconds: float, channel_tls: WalletTls | None = None
    ) -> None:
        # Must be created inside the running event loop: grpc.aio channels are bound to the loop they start on.
        self._channel = wallet_channel(address, channel_tls)
        self._stub = wallet_pb2_grpc.WalletServiceStub(self._channel)
        self._token = token
        self._timeout_seconds = timeout_seconds

    async def close(self) -> None:
        await self._channel.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", self._token.authorization()),)

    async def get_account(self, account_id: str) -> domain.WalletAccount | None:
        """None when the wallet has no such account; UNAVAILABLE when it cannot tell."""
        try:
            with tracing.client_call(GET_ACCOUNT) as trace_metadata:
                response = await self._stub.GetAccount(
                    wallet_pb2.GetAccountRequest(account_id=account_id),
                    metadata=self._metadata() + trace_metadata,
                    timeout=self._timeout_seconds,
                    wait_for_ready=True,
                )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise _wallet_unavailable("GetAccount", error) from None
        return domain.WalletAccount(response.account.account_id, response.account.adult_verified)

    async def spend_batch(self, asks: Sequence[SpendAsk]) -> list[Spend | AppError]:
        """One wallet call for many spends; each gets a Spend or the wallet's refusal (final or not: see
        domain.is_final_wallet_refusal). UNAVAILABLE is raised when the outcome of the whole batch is unknown (the
        same request_ids must then be retried: the wallet answers a repeat with its stored outcome)."""
        request = wallet_pb2.SpendCoinsBatchRequest(
            spends=[
                wallet_pb2.SpendCoinsRequest(
                    request_id=ask.request_id, account_id=ask.account_id, coins=ask.coins, reference=ask.reference
                )
                for ask in asks
            ]
        )
        try:
            with tracing.client_call(SPEND_COINS_BATCH) as trace_metadata:
                response = await self._stub.SpendCoinsBatch(
                    request,
                    metadata=self._metadata() + trace_metadata,
                    timeout=self._timeout_seconds,
                    wait_for_ready=True,
                )
        except grpc.aio.AioRpcError as error:
            raise _wallet_unavailable("SpendCoinsBatch", error) from None
        assert len(response.outcomes) == len(asks), f"{len(response.outcomes)} outcomes for {len(asks)} spends"
        return [_spend_or_refusal(outcome) for outcome in response.outcomes]


def _spend_or_refusal(outcome: wallet_pb2.SpendCoinsOutcome) -> Spend | AppError:
    if outcome.HasField("spent"):
        spent = outcome.spent
        return Spend(spent.transaction_id, spent.balance.coins, spent.paid_coins, spent.bonus_coins)
    refusal = outcome.refused
    code = grpc.StatusCode[refusal.code] if refusal.code in grpc.StatusCode.__members__ else grpc.StatusCode.UNKNOWN
    return AppError(code, refusal.reason, refusal.message)


def _wallet_unavailable(method: str, error: grpc.aio.AioRpcError) -> AppError:
    log.warning("wallet_call_failed", wallet_method=method, code=error.code().name, details=error.details())
    return unavailable("WALLET_UNAVAILABLE", "the wallet did not answer; retry with the same request_id")
