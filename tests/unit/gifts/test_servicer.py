"""Who may call each gifts RPC: every RPC declares it (runtime/authorization.py), the declarations are the ones the
API contract gives, and the check comes before the input's."""

from __future__ import annotations

import grpc
import pytest
from coinstream.gifts.v1 import gifts_pb2

from services.gifts.servicer import GiftServicer
from services.runtime.auth import ROLE_ADMIN, ROLE_SERVICE, ROLE_USER, Principal, set_current_principal
from services.runtime.authorization import Access, access_of, undeclared_rpcs
from services.runtime.errors import AppError
from tests.unit.gifts.world import ROSE, World, refused, send_request

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
