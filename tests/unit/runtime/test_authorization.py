"""The per-RPC access declarations (services/runtime/authorization.py), without servers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from coinstream.payouts.v1 import payouts_pb2_grpc

from services.runtime.auth import ROLE_ADMIN, ROLE_SERVICE, ROLE_USER, Principal, set_current_principal
from services.runtime.authorization import (
    allow_any_caller,
    allow_owner,
    allow_resource_owner,
    allow_roles,
    may_see_resource,
    require_resource_owner,
    undeclared_rpcs,
)
from services.runtime.errors import AppError


class Servicer(payouts_pb2_grpc.PayoutServiceServicer):
    @allow_roles(ROLE_ADMIN)
    async def GetRates(self, request: object, context: object) -> str:
        return "set"

    @allow_owner("creator_id", or_roles=(ROLE_SERVICE,))
    async def RequestWithdrawal(self, request: object, context: object) -> str:
        return "requested"

    @allow_resource_owner(or_roles=(ROLE_SERVICE,))
    async def CancelWithdrawal(self, request: SimpleNamespace, context: object) -> str:
        require_resource_owner(request.owner)
        return "canceled"

    @allow_resource_owner(or_roles=(ROLE_SERVICE, ROLE_ADMIN))
    async def GetWithdrawal(self, request: SimpleNamespace, context: object) -> str:
        return "found" if may_see_resource(request.owner) else "not found"

    @allow_resource_owner(or_roles=(ROLE_SERVICE,))
    async def ListWithdrawals(self, request: object, context: object) -> str:
        return "forgot to check"

    @allow_any_caller
    async def GetEarnings(self, request: object, context: object) -> str:
        return "earnings"


def call_as(subject: str, *roles: str) -> None:
    set_current_principal(Principal(subject=subject, roles=frozenset(roles)))


async def test_roles_only() -> None:
    call_as("ops", ROLE_ADMIN)
    assert await Servicer().GetRates(None, None) == "set"
    call_as("alice", ROLE_USER)
    with pytest.raises(AppError, match="roles"):
        await Servicer().GetRates(None, None)


async def test_the_owner_named_by_a_field_or_a_role() -> None:
    call_as("alice", ROLE_USER)
    assert await Servicer().RequestWithdrawal(SimpleNamespace(creator_id="alice"), None) == "requested"
    with pytest.raises(AppError, match="creator_id"):
        await Servicer().RequestWithdrawal(SimpleNamespace(creator_id="bob"), None)
    with pytest.raises(AppError):  # an empty field never matches
        call_as("", ROLE_USER)
        await Servicer().RequestWithdrawal(SimpleNamespace(creator_id=""), None)
    call_as("gifts", ROLE_SERVICE)
    assert await Servicer().RequestWithdrawal(SimpleNamespace(creator_id="bob"), None) == "requested"


async def test_a_looked_up_owner() -> None:
    call_as("alice", ROLE_USER)
    assert await Servicer().CancelWithdrawal(SimpleNamespace(owner="alice"), None) == "canceled"
    with pytest.raises(AppError):
        await Servicer().CancelWithdrawal(SimpleNamespace(owner="bob"), None)
    assert await Servicer().GetWithdrawal(SimpleNamespace(owner="bob"), None) == "not found"
    call_as("ops", ROLE_ADMIN)
    assert await Servicer().GetWithdrawal(SimpleNamespace(owner="bob"), None) == "found"
    with pytest.raises(AppError):  # an admin is not in CancelWithdrawal's roles, and owns nothing
        await Servicer().CancelWithdrawal(SimpleNamespace(owner="bob"), None)


async def test_a_method_that_never_checks_its_resource_fails_instead_of_answering() -> None:
    call_as("alice", ROLE_USER)
    with pytest.raises(RuntimeError, match="without checking"):
        await Servicer().ListWithdrawals(None, None)


async def test_any_caller() -> None:
    call_as("alice", ROLE_USER)
    assert await Servicer().GetEarnings(None, None) == "earnings"


def test_undeclared_rpcs_are_listed() -> None:
    missing = undeclared_rpcs(Servicer())
    assert "ListEarnings" in missing and "UpdateCreatorProfile" in missing
    assert set(missing) == {"ListEarnings", "UpdateCreatorProfile", "ListClawbacks"}
