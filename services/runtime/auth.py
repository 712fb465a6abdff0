"""JWT authentication and the contract's authorization rules (user acts on its own sub; service for anyone;
admin RPCs need admin)."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass

import jwt

from services.runtime.config import RuntimeSettings
from services.runtime.errors import permission_denied, unauthenticated

ROLE_USER = "user"
ROLE_SERVICE = "service"
ROLE_ADMIN = "admin"
KNOWN_ROLES = frozenset({ROLE_USER, ROLE_SERVICE, ROLE_ADMIN})


@dataclass(frozen=True)
class Principal:
    subject: str
    roles: frozenset[str]

    def require_any_role(self, *roles: str) -> None:
        if not self.roles.intersection(roles):
            raise permission_denied(f"this call needs one of the roles {sorted(roles)}")

    def require_account_access(self, account_id: str, *, privileged_roles: tuple[str, ...]) -> None:
        """The owner (role user, sub == account_id) or any of privileged_roles may act on account_id."""
        if self.roles.intersection(privileged_roles):
            return
        if ROLE_USER in self.roles and self.subject == account_id:
            return
        raise permission_denied(f"not allowed to act on account {account_id!r}")


_current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")


def current_principal() -> Principal:
    return _current_principal.get()


def set_current_principal(principal: Principal) -> contextvars.Token[Principal]:
    return _current_principal.set(principal)


# Verified tokens are remembered until they expire: a backend sends the same token with every call, and checking
# its signature each time was a visible share of a call's CPU. Bounded, so a flood of distinct tokens costs memory
# only up to this many entries (the oldest are forgotten first).
VERIFIED_TOKEN_CACHE_SIZE = 10_000


class TokenVerifier:
    def __init__(self, settings: RuntimeSettings) -> None:
        self._algorithm = settings.auth_algorithm
        self._key = (
            settings.auth_public_key_pem
            if settings.auth_algorithm == "RS256"
            else settings.auth_secret.get_secret_value()
        )
        # authorization header -> (principal, expiry in epoch seconds); insertion-ordered, oldest first.
        self._verified: dict[str, tuple[Principal, float]] = {}

    def verify(self, authorization: str | None) -> Principal:
        key = authorization or ""
        cached = self._verified.get(key)
        if cached is not None:
            principal, expires_at = cached
            if time.time() < expires_at:
                return principal
            del self._verified[key]
        principal, expires_at = self._verify_signed(authorization)
        if len(self._verified) >= VERIFIED_TOKEN_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[key] = (principal, expires_at)
        return principal

    def _verify_signed(self, authorization: str | None) -> tuple[Principal, float]:
        if not authorization:
            raise unauthenticated("missing authorization metadata (expected 'Bearer <JWT>')")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise unauthenticated("authorization metadata must be 'Bearer <JWT>'")
        try:
            claims = jwt.decode(
                token.strip(), self._key, algorithms=[self._algorithm], options={"require": ["sub", "exp"]}
            )
        except jwt.ExpiredSignatureError:
            raise unauthenticated("token expired") from None
        except jwt.InvalidTokenError as error:
            raise unauthenticated(f"invalid token: {error}") from None
        roles = claims.get("roles")
        if not isinstance(roles, list) or not roles or not set(roles) <= KNOWN_ROLES:
            raise unauthenticated(f"token roles must be a non-empty list of {sorted(KNOWN_ROLES)}")
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise unauthenticated("token sub must be a non-empty string")
        return Principal(subject=subject, roles=frozenset(roles)), float(claims["exp"])


def mint_token(secret: str, subject: str, roles: list[str], ttl_seconds: int = 3600) -> str:
    """HS256 token for development, tests and service-to-service calls in a shared-secret deployment."""
    now = int(time.time())
    return jwt.encode({"sub": subject, "roles": roles, "iat": now, "exp": now + ttl_seconds}, secret, algorithm="HS256")
