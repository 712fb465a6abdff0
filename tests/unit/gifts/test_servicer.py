"""Who may call each gifts RPC: every RPC declares it (runtime/authorization.py), the declarations are the ones the
API contract gives, and the check comes before the input's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2

from services.gifts.config import StreamLimits
from services.gifts.servicer import GiftServicer
from services.runtime.auth import ROLE_ADMIN, ROLE_SERVICE, ROLE_USER, Principal, set_current_principal
from services.runtime.authorization import Access, access_of, undeclared_rpcs
from services.runtime.errors import AppError
from tests.unit.gifts.world import LION, ROSE, World, refused, send_request

ANYONE = Access(roles=frozenset(), any_caller=True)
EXPECTED = {
    "ListGifts": ANYONE,
    "GetStreamSummary": ANYONE,
    "WatchStreamGifts": ANYONE,
    "GetLeaderboard": ANYONE,
    "GetVideoSummary": ANYONE,
    "GetMatch": ANYONE,
    "StartLiveStream": Access(roles=frozenset({ROLE_SERVICE}), owner_field="creator_id"),
    "SendGift": Access(roles=frozenset({ROLE_SERVICE}), owner_field="sender_id"),
    "EndLiveStream": Access(roles=frozenset({ROLE_SERVICE}), resource_owner=True),
    "SetStreamGoal": Access(roles=frozenset({ROLE_SERVICE}), resource_owner=True),
    "UpsertGift": Access(roles=frozenset({ROLE_ADMIN})),
    "RetireGift": Access(roles=frozenset({ROLE_ADMIN})),
    "UpsertVideo": Access(roles=frozenset({ROLE_SERVICE, ROLE_ADMIN})),
    "StartMatch": Access(roles=frozenset({ROLE_SERVICE, ROLE_ADMIN})),
    "SendGifts": Access(roles=frozenset({ROLE_SERVICE})),
}


def servicer(world: World | None = None) -> GiftServicer:
    return GiftServicer((world or World()).gifts)


def call_as(subject: str, *roles: str) -> None:
    set_current_principal(Principal(subject=subject, roles=frozenset(roles)))


def test_every_rpc_declares_who_may_call_it() -> None:
    assert undeclared_rpcs(servicer()) == []


@pytest.mark.parametrize("rpc", sorted(EXPECTED))
def test_each_rpc_allows_whom_the_contract_says(rpc: str) -> None:
    assert access_of(getattr(servicer(), rpc)) == EXPECTED[rpc]


async def test_a_caller_who_may_not_send_is_refused_before_the_input_is_checked() -> None:
    call_as("mallory", ROLE_USER)
    invalid = gifts_pb2.SendGiftRequest(request_id="", sender_id="alice", stream_id="s", gift_id="rose", quantity=0)
    assert await refused(servicer().SendGift(invalid, None)) == (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
    call_as("alice", ROLE_USER)
    assert (await refused(servicer().SendGift(invalid, None)))[0] == grpc.StatusCode.INVALID_ARGUMENT


async def test_only_the_streams_creator_or_a_service_ends_it() -> None:
    world = World()
    stream_id = await world.live_stream("creator")
    request = gifts_pb2.EndLiveStreamRequest(request_id="r1", stream_id=stream_id)
    for caller, roles in [("fan", (ROLE_USER,)), ("admin", (ROLE_ADMIN,))]:
        call_as(caller, *roles)
        assert await refused(servicer(world).EndLiveStream(request, None)) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
        )
    call_as("creator", ROLE_USER)
    response = await servicer(world).EndLiveStream(request, None)
    assert response.stream.status == gifts_pb2.STREAM_STATUS_ENDED


async def test_the_owner_sends_under_their_own_request_id_namespace() -> None:
    world = World()
    await world.catalog(ROSE)
    stream_id = await world.live_stream("creator")
    world.fan("alice", 100)
    call_as("alice", ROLE_USER)
    response = await servicer(world).SendGift(send_request("alice", ROSE, stream_id=stream_id, request_id="r1"), None)
    assert response.sender_balance_coins == 95
    # The key keeps exactly the response's bytes (what a replay, by this release or another, answers).
    assert world.store.tables.keys["alice/r1"].response == response.SerializeToString()


async def test_the_leaderboard_takes_the_apis_periods_only() -> None:
    call_as("anyone", ROLE_USER)
    request = gifts_pb2.GetLeaderboardRequest(creator_id="creator", period=gifts_pb2.LEADERBOARD_PERIOD_UNSPECIFIED)
    with pytest.raises(AppError) as error:
        await servicer().GetLeaderboard(request, None)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_stream_of_gifts_answers_each_in_its_own_response_as_send_gift_would() -> None:
    world = World()
    await world.catalog(ROSE, LION)
    stream_id = await world.live_stream("creator")
    world.fan("alice", 100)
    good = send_request("alice", ROSE, stream_id=stream_id, request_id="r1")
    invalid = send_request("alice", ROSE, stream_id=stream_id, request_id="r2", quantity=0)
    too_dear = send_request("alice", LION, stream_id=stream_id, request_id="r3")

    async def requests() -> AsyncIterator[gifts_pb2.SendGiftRequest]:
        for request in (good, invalid, too_dear):
            yield request

    call_as("backend", ROLE_SERVICE)
    gifts = GiftServicer(world.gifts, stream_limits=StreamLimits(max_in_flight=1))
    answers = {answer.request_id: answer async for answer in gifts.SendGifts(requests(), None)}
    assert answers["r1"].gift.sender_balance_coins == 95
    assert (answers["r2"].error.code, answers["r2"].error.message) == (
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "invalid request: quantity: must be between 1 and 10000",
    )
    assert answers["r3"].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    # Kept under the caller's namespace, exactly as SendGift keeps it: a replay through SendGift answers the same.
    assert await servicer(world).SendGift(send_request("alice", ROSE, stream_id=stream_id, request_id="r1"), None) == (
        answers["r1"].gift
    )
