"""The wallet service: python -m services.wallet serves, python -m services.wallet migrate only migrates."""

from __future__ import annotations

from pathlib import Path

from coinstream.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from services.runtime.server import ServiceRuntime
from services.runtime.server import main as runtime_main
from services.wallet.config import WalletSettings
from services.wallet.payments import SandboxPaymentProvider
from services.wallet.service import WalletService
from services.wallet.servicer import WalletServicer
from services.wallet.store import PostgresWalletStore

MIGRATIONS = Path(__file__).parent / "migrations"
# The gifts service's batches of spends are never shed: each carries gifts that were already accepted.
UNSHED_METHODS = frozenset({"/coinstream.wallet.v1.WalletService/SpendCoinsBatch"})


async def main() -> None:
    settings = WalletSettings()
    runtime = ServiceRuntime(settings, unshed_methods=UNSHED_METHODS)
    pool = runtime.use_database(MIGRATIONS)
    wallet = WalletService(
        PostgresWalletStore(pool),
        SandboxPaymentProvider(),
        settings.wallet_payment_timeout_seconds,
        settings.batch_policy(),
        settings.decline_limits(),
    )
    servicer = WalletServicer(wallet)
    runtime.add_service(
        wallet_pb2_grpc.add_WalletServiceServicer_to_server,
        servicer,
        wallet_pb2.DESCRIPTOR.services_by_name["WalletService"].full_name,
    )

    runtime.add_periodic(
        "purchase_recovery",
        settings.wallet_recovery_interval_seconds,
        lambda: wallet.recover_pending_purchases(settings.wallet_recovery_age_seconds),
    )
    await runtime.run()


if __name__ == "__main__":
    runtime_main(main, WalletSettings, MIGRATIONS)
