"""An endpoint of the providers' HTTP port answers 2xx only for an applied (or already applied) notification, 4xx for
one refused as it stands, 5xx for one that could not be applied, 503 while the service is not ready, and 413 for a
body over the limit, which its handler never sees."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import httpx
import pytest_asyncio

from services.runtime.http_ingress import Answer, HttpIngress, Rejected, Unsigned

MAX_BODY = 4096


class Endpoint:
    def __init__(self) -> None:
        self.seen: list[bytes] = []

    async def __call__(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        self.seen.append(body)
        if body == b"unsigned":
            raise Unsigned("signature does not verify")
        if body == b"junk":
            raise Rejected("not a notification")
        if body == b"boom":
            raise RuntimeError("database went away")
        return Answer({"ok": headers.get("x-test", "")}, duplicate=body == b"again")


class Service:
    ready = True


@pytest_asyncio.fixture
async def port() -> AsyncIterator[tuple[httpx.AsyncClient, Endpoint, Service]]:
    endpoint, service = Endpoint(), Service()
    ingress = HttpIngress("127.0.0.1", 0, MAX_BODY, None, lambda: service.ready)
    ingress.add_endpoint("/notifications/test", endpoint)
    await ingress.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ingress.bound_port}") as client:
            yield client, endpoint, service
    finally:
        await ingress.stop()


async def test_each_outcome_has_its_answer(port: tuple[httpx.AsyncClient, Endpoint, Service]) -> None:
    client, endpoint, _ = port
    answers = {
        body: await client.post("/notifications/test", content=body, headers={"X-Test": "yes"})
        for body in (b"fine", b"again", b"unsigned", b"junk", b"boom")
    }
    assert {body: answer.status_code for body, answer in answers.items()} == {
        b"fine": 200,
        b"again": 200,
        b"unsigned": 401,
        b"junk": 400,
        b"boom": 500,
    }
    assert answers[b"fine"].json() == {"ok": "yes"}  # headers reach the handler, lower-cased
    assert answers[b"unsigned"].json() == {"error": "signature does not verify"}
    assert "database" not in answers[b"boom"].text  # an internal error is logged, not told
    assert endpoint.seen == [b"fine", b"again", b"unsigned", b"junk", b"boom"]


async def test_a_body_over_the_limit_is_refused_unread(port: tuple[httpx.AsyncClient, Endpoint, Service]) -> None:
    client, endpoint, _ = port
    answer = await client.post("/notifications/test", content=b"x" * (MAX_BODY + 1))
    assert answer.status_code == 413
    assert endpoint.seen == []


async def test_a_service_not_ready_asks_the_sender_to_retry(port: tuple[httpx.AsyncClient, Endpoint, Service]) -> None:
    client, endpoint, service = port
    service.ready = False
    answer, health = await client.post("/notifications/test", content=b"fine"), await client.get("/healthz")
    assert (answer.status_code, health.status_code) == (503, 503)
    assert endpoint.seen == []
