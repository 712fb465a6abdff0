"""The HTTP port the wallet and payouts serve for providers (services/runtime/http_ingress.py): its health endpoints,
an unknown path; and RedeemStorePurchase's refusals that need no store. (tests/unit/runtime/test_http_ingress.py
has the answers of an endpoint.)"""

from __future__ import annotations

import httpx
import pytest
from coinstream.wallet.v1 import wallet_pb2 as w
from grpc import StatusCode

from tests.support.clients import SERVICE, Clients, new_id
from tests.support.errors import expect_error, violated_fields
from tests.support.factories import create_account
from tests.support.stack import Stack


@pytest.mark.parametrize("service", ["wallet", "payouts"])
async def test_the_providers_port_answers_health_while_the_service_is_ready(stack: Stack, service: str) -> None:
    async with httpx.AsyncClient(base_url=stack.services[service].http_url) as http:
        ready, alive = await http.get("/healthz"), await http.get("/livez")
        missing = await http.post("/notifications/nowhere", content=b"{}")
    assert (ready.status_code, ready.json()) == (200, {"status": "SERVING"})
    assert alive.status_code == 200
    assert missing.status_code == 404


async def test_redeem_refuses_a_request_without_its_stores_proof(clients: Clients) -> None:
    account_id = await create_account(clients)
    no_store = await expect_error(
        clients.wallet.RedeemStorePurchase(
            w.RedeemStorePurchaseRequest(request_id=new_id("req"), account_id=account_id, signed_transaction="x.y.z"),
            metadata=SERVICE,
        ),
        StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(no_store) == {"store"}
    mixed = await expect_error(
        clients.wallet.RedeemStorePurchase(
            w.RedeemStorePurchaseRequest(
                request_id=new_id("req"),
                account_id=account_id,
                store=w.STORE_GOOGLE_PLAY,
                purchase_token="token",
                product_id="coins_100",
                signed_transaction="x.y.z",
            ),
            metadata=SERVICE,
        ),
        StatusCode.INVALID_ARGUMENT,
    )
    assert violated_fields(mixed) == {"signed_transaction"}
