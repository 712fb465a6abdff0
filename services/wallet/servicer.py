"""gRPC entrypoint of the wallet: check input, check who is calling, call one use case."""

from __future__ import annotations

import re

import grpc
from coinstream.wallet.v1 import wallet_pb2, wallet_pb2_grpc

from services.runtime.auth import ROLE_ADMIN, ROLE_SERVICE, current_principal
from services.runtime.validation import Validator, page_size
from services.wallet.service import WalletService

COUNTRY_CODE = re.compile(r"^[A-Z]{2}$")
MAX_SPEND_COINS = 10_000_000_000  # far above any gift (10,000 × the dearest) yet far from int64 overflow
OWNER_OR_STAFF = (ROLE_SERVICE, ROLE_ADMIN)


class WalletServicer(wallet_pb2_grpc.WalletServiceServicer):
    def __init__(self, wallet: WalletService) -> None:
        self._wallet = wallet

    async def UpsertAccount(
        self, request: wallet_pb2.UpsertAccountRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.UpsertAccountResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.account_id, "account_id")
        if not COUNTRY_CODE.fullmatch(request.country_code):
            check.fail("country_code", "must be an ISO 3166-1 alpha-2 code such as 'US'")
        check.raise_if_invalid()
        current_principal().require_any_role(ROLE_SERVICE, ROLE_ADMIN)
        return await self._wallet.upsert_account(request)

    async def GetAccount(
        self, request: wallet_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.GetAccountResponse:
        _check_account_id(request.account_id)
        current_principal().require_account_access(request.account_id, privileged_roles=OWNER_OR_STAFF)
        return wallet_pb2.GetAccountResponse(account=await self._wallet.get_account(request.account_id))

    async def GetBalance(
        self, request: wallet_pb2.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.GetBalanceResponse:
        _check_account_id(request.account_id)
        current_principal().require_account_access(request.account_id, privileged_roles=OWNER_OR_STAFF)
        return wallet_pb2.GetBalanceResponse(balance=await self._wallet.get_balance(request.account_id))

    async def ListCoinPackages(
        self, request: wallet_pb2.ListCoinPackagesRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.ListCoinPackagesResponse:
        return wallet_pb2.ListCoinPackagesResponse(packages=self._wallet.list_packages())

    async def PurchaseCoins(
        self, request: wallet_pb2.PurchaseCoinsRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.PurchaseCoinsResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.account_id, "account_id")
        check.text(request.package_id, "package_id", max_length=64)
        check.text(request.payment_token, "payment_token", max_length=512)
        check.raise_if_invalid()
        current_principal().require_account_access(request.account_id, privileged_roles=(ROLE_SERVICE,))
        return await self._wallet.purchase(request)

    async def SpendCoins(
        self, request: wallet_pb2.SpendCoinsRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.SpendCoinsResponse:
        check = Validator()
        check.request_id(request.request_id)
        check.identifier(request.account_id, "account_id")
        check.int_range(request.coins, "coins", minimum=1, maximum=MAX_SPEND_COINS)
        check.text(request.reference, "reference", max_length=256, required=False)
        check.raise_if_invalid()
        current_principal().require_any_role(ROLE_SERVICE)
        return await self._wallet.spend(request)

    async def ListTransactions(
        self, request: wallet_pb2.ListTransactionsRequest, context: grpc.aio.ServicerContext
    ) -> wallet_pb2.ListTransactionsResponse:
        check = Validator()
        check.identifier(request.account_id, "account_id")
        size = page_size(check, request.page_size)
        check.text(request.page_token, "page_token", max_length=256, required=False)
        check.raise_if_invalid()
        current_principal().require_account_access(request.account_id, privileged_roles=OWNER_OR_STAFF)
        return await self._wallet.list_transactions(request.account_id, size, request.page_token)


def _check_account_id(account_id: str) -> None:
    check = Validator()
    check.identifier(account_id, "account_id")
    check.raise_if_invalid()
