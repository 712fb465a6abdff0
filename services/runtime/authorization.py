"""Who may call each RPC, declared on the RPC itself: one style for the three services.

Every servicer method carries exactly one of these decorators:

    @allow_roles(ROLE_ADMIN)                               only these roles
    @allow_owner("sender_id", or_roles=(ROLE_SERVICE,))    the user whose sub is request.sender_id, or these roles
    @allow_resource_owner(or_roles=(ROLE_SERVICE,))        the owner of a resource the method looks up first
    @allow_any_caller                                      any authenticated caller (catalogs, public summaries)

The decorator checks the caller before the method reads its input, so a caller who may not act learns nothing
about the request's validity. For @allow_resource_owner the method names the owner once it knows it, with
`require_resource_owner(owner_id)` (refuses) or `may_see_resource(owner_id)` (answers, for NOT_FOUND-style
hiding); a method that returns without having asked is a bug, and the call fails INTERNAL rather than answering
unchecked. ServiceRuntime.add_service refuses to start a servicer with an RPC that declares nothing, so a new RPC
cannot ship open by omission."""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from services.runtime.auth import ROLE_USER, current_principal
from services.runtime.errors import permission_denied

ACCESS_ATTRIBUTE = "__coinstream_access__"


@dataclass(frozen=True)
class Access:
    """What one RPC allows. `roles` may always call; the owner (a user whose sub is the owner's id) may call too
    when the RPC names where the owner is (`owner_field`) or looks it up (`resource_owner`)."""

    roles: frozenset[str]
    owner_field: str | None = None
    resource_owner: bool = False
    any_caller: bool = False

    def allows_owner(self, owner_id: str) -> bool:
        principal = current_principal()
        if principal.roles & self.roles:
            return True
        return ROLE_USER in principal.roles and bool(owner_id) and principal.subject == owner_id


class _ResourceCheck:
    """The running call's declaration, and whether its method has named the resource's owner yet."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self.asked = False


_resource_check: contextvars.ContextVar[_ResourceCheck | None] = contextvars.ContextVar("resource_check", default=None)


def require_resource_owner(owner_id: str) -> None:
    """For @allow_resource_owner RPCs: refuses (PERMISSION_DENIED) unless the caller owns owner_id's resource or has
    one of the declared roles."""
    if not may_see_resource(owner_id):
        raise permission_denied("not allowed to act on this resource")


def may_see_resource(owner_id: str) -> bool:
    """For @allow_resource_owner RPCs that hide foreign resources (answer NOT_FOUND rather than PERMISSION_DENIED)."""
    check = _resource_check.get()
    if check is None:
        raise RuntimeError("may_see_resource outside an @allow_resource_owner RPC")
    check.asked = True
    return check.access.allows_owner(owner_id)


def _refuse_unless_allowed(access: Access, request: object) -> None:
    principal = current_principal()
    if access.any_caller or principal.roles & access.roles:
        return
    if access.owner_field is not None:
        if access.allows_owner(getattr(request, access.owner_field)):
            return
        # The id is not echoed: it is the caller's input, unchecked yet (of any size), and names someone else.
        raise permission_denied(f"not allowed to act on this {access.owner_field}")
    if access.resource_owner and ROLE_USER in principal.roles:
        return  # the method checks the owner once it has looked the resource up
    raise permission_denied(f"this call needs one of the roles {sorted(access.roles)}")


Method = TypeVar("Method", bound=Callable[..., Any])


def _declare(access: Access) -> Callable[[Method], Method]:
    def decorate(method: Method) -> Method:
        if inspect.isasyncgenfunction(method):
            wrapped: Callable[..., Any] = _streaming(method, access)
        else:
            wrapped = _unary(method, access)
        setattr(wrapped, ACCESS_ATTRIBUTE, access)
        return cast(Method, wrapped)  # functools.wraps keeps the signature; mypy cannot see it

    return decorate


def _unary(method: Callable[..., Any], access: Access) -> Callable[..., Any]:
    @functools.wraps(method)
    async def unary(servicer: object, request: object, context: object) -> object:
        _refuse_unless_allowed(access, request)
        check = _ResourceCheck(access) if access.resource_owner else None
        token = _resource_check.set(check)
        try:
            response = await method(servicer, request, context)
        finally:
            _resource_check.reset(token)
        if check is not None and not check.asked:
            # A bug, not the caller's fault: the interceptor logs it and answers INTERNAL.
            raise RuntimeError(f"{method.__qualname__} returned without checking its resource's owner")
        return response

    return unary


def _streaming(method: Callable[..., AsyncIterator[object]], access: Access) -> Callable[..., AsyncIterator[object]]:
    if access.resource_owner:
        raise TypeError("a streaming RPC cannot declare @allow_resource_owner")

    @functools.wraps(method)
    async def streaming(servicer: object, request: object, context: object) -> AsyncIterator[object]:
        _refuse_unless_allowed(access, request)
        async for response in method(servicer, request, context):
            yield response

    return streaming


def allow_roles(*roles: str) -> Callable[[Method], Method]:
    return _declare(Access(roles=frozenset(roles)))


def allow_owner(owner_field: str, *, or_roles: tuple[str, ...]) -> Callable[[Method], Method]:
    return _declare(Access(roles=frozenset(or_roles), owner_field=owner_field))


def allow_resource_owner(*, or_roles: tuple[str, ...]) -> Callable[[Method], Method]:
    return _declare(Access(roles=frozenset(or_roles), resource_owner=True))


def allow_any_caller(method: Method) -> Method:
    return _declare(Access(roles=frozenset(), any_caller=True))(method)


def undeclared_rpcs(servicer: object) -> list[str]:
    """The RPCs of servicer's generated base class (…_pb2_grpc.<Name>Servicer) whose implementation declares no
    access. An RPC left unimplemented (the generated UNIMPLEMENTED stub) counts as undeclared too."""
    generated = next((cls for cls in type(servicer).__mro__ if cls.__module__.endswith("_pb2_grpc")), None)
    if generated is None:
        raise TypeError(f"{type(servicer).__name__} does not derive from a generated servicer")
    rpc_names = [name for name, value in vars(generated).items() if inspect.isfunction(value) and name[0].isupper()]
    return [name for name in rpc_names if access_of(getattr(servicer, name)) is None]


def access_of(method: object) -> Access | None:
    access = getattr(method, ACCESS_ATTRIBUTE, None)
    return access if isinstance(access, Access) else None
