"""Declaring streams and consumers at start-up, without servers: JetStream's "not yet" answers (a cluster forming,
electing, placing replicas) are waited out; any other answer, and a wait that runs out, stop the start with a reason
that names what was asked for and the servers the cluster reported."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast
from urllib.parse import urlparse

import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import APIError, BadRequestError, ServiceUnavailableError

from services.runtime import messaging

pytestmark = pytest.mark.timeout(30)

NO_SUITABLE_PEERS = BadRequestError(code=400, err_code=10005, description="no suitable peers for placement")


class KnownServers:
    """What _until_jetstream_answers reads of a client: the servers it knows (configured and announced)."""

    servers = [urlparse("nats://127.0.0.1:4222"), urlparse("nats://127.0.0.1:4223")]


def client() -> NatsClient:
    return cast(NatsClient, KnownServers())


def answering(*answers: Exception | None) -> tuple[Callable[[], Awaitable[None]], list[int]]:
    """A declaration that raises the given answers in turn (None: accepted), and the count of its calls."""
    calls = [0]

    async def declare() -> None:
        answer = answers[min(calls[0], len(answers) - 1)]
        calls[0] += 1
        if answer is not None:
            raise answer

    return declare, calls


@pytest.fixture(autouse=True)
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messaging, "DECLARE_RETRY_SECONDS", 0.0)


@pytest.mark.parametrize(
    "not_yet",
    [
        NO_SUITABLE_PEERS,
        APIError(code=503, err_code=10008, description="JetStream system temporarily unavailable"),
        APIError(code=500, err_code=10009, description="JetStream cluster can not handle request"),
        ServiceUnavailableError(),
        nats.errors.TimeoutError(),
        nats.errors.NoRespondersError(),
    ],
)
async def test_not_yet_answers_are_waited_out(not_yet: Exception) -> None:
    declare, calls = answering(not_yet, not_yet, None)
    await messaging._until_jetstream_answers(client(), "GIFTS", 3, declare)
    assert calls[0] == 3


async def test_a_refusal_stops_the_start_at_once() -> None:
    refusal = BadRequestError(code=400, err_code=10058, description="stream name already in use")
    declare, calls = answering(refusal, None)
    with pytest.raises(BadRequestError):
        await messaging._until_jetstream_answers(client(), "GIFTS", 3, declare)
    assert calls[0] == 1


async def test_a_wait_that_runs_out_names_the_replicas_the_answer_and_the_servers() -> None:
    declare, calls = answering(NO_SUITABLE_PEERS)
    with pytest.raises(messaging.JetStreamNotReady) as stopped:
        await messaging._until_jetstream_answers(client(), "GIFTS", 3, declare, patience_seconds=0.05)
    reason = str(stopped.value)
    assert "GIFTS with 3 replica(s)" in reason
    assert "no suitable peers for placement (err_code 10005)" in reason
    assert "127.0.0.1:4222, 127.0.0.1:4223" in reason
    assert calls[0] >= 1
