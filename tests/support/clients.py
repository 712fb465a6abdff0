"""Calling the stack: async gRPC stubs of the three services, call metadata carrying minted tokens, and unique ids
(tests isolate themselves with them)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from coinstream.gifts.v1 import gifts_pb2_grpc
from coinstream.payouts.v1 import payouts_pb2_grpc
from coinstream.wallet.v1 import wallet_pb2_grpc

from services.runtime.auth import mint_token
from services.runtime.idempotency import caller_scoped
from tests.support.stack import AUTH_SECRET, Stack


@dataclass
class Clients:
    wallet: wallet_pb2_grpc.WalletServiceStub
    gifts: gifts_pb2_grpc.GiftServiceStub
    payouts: payouts_pb2_grpc.PayoutServiceStub


@asynccontextmanager
async def clients_for(stack: Stack) -> AsyncIterator[Clients]:
    channels = {name: stack.aio_channel(stack.address(name)) for name in ("wallet", "gifts", "payouts")}
    try:
        yield Clients(
            wallet=wallet_pb2_grpc.WalletServiceStub(channels["wallet"]),
            gifts=gifts_pb2_grpc.GiftServiceStub(channels["gifts"]),
            payouts=payouts_pb2_grpc.PayoutServiceStub(channels["payouts"]),
        )
    finally:
        for channel in channels.values():
            await channel.close()


def auth(subject: str, *roles: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying a freshly minted token."""
    return (("authorization", f"Bearer {mint_token(AUTH_SECRET, subject, list(roles or ('user',)))}"),)


SERVICE_SUBJECT = "test-backend"
SERVICE = auth(SERVICE_SUBJECT, "service")
ADMIN = auth("test-admin", "admin")


def stored_key(request_id: str, subject: str = SERVICE_SUBJECT) -> str:
    """The request_id as the services store it: in its caller's namespace (request_ids are unique per caller)."""
    return caller_scoped(subject, request_id)


def new_id(prefix: str = "id") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
