"""JWT authentication and the contract's authorization rules (user acts on its own sub; service for anyone;
admin RPCs need admin)."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import jwt
import structlog

from services.runtime.config import RuntimeSettings
from services.runtime.errors import unauthenticated

if TYPE_CHECKING:
    from jwt.algorithms import AllowedPublicKeys

    # What a signature is checked with: the HS256 secret, a PEM, or a public key read from a JWKS file.
    VerificationKey: TypeAlias = AllowedPublicKeys | str | bytes

log = structlog.get_logger()

ROLE_USER = "user"
ROLE_SERVICE = "service"
ROLE_ADMIN = "admin"
KNOWN_ROLES = frozenset({ROLE_USER, ROLE_SERVICE, ROLE_ADMIN})


@dataclass(frozen=True)
class Principal:
    subject: str
    roles: frozenset[str]


_current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal")


def current_principal() -> Principal:
    return _current_principal.get()


def set_current_principal(principal: Principal) -> contextvars.Token[Principal]:
    return _current_principal.set(principal)


# Verified tokens are remembered until they expire: a backend sends the same token with every call, and checking
# its signature each time was a visible share of a call's CPU. Bounded, so a flood of distinct tokens costs memory
# only up to this many entries (the oldest are forgotten first).
VERIFIED_TOKEN_CACHE_SIZE = 10_000
# A subject scopes every request_id its caller sends (stored with each key), so it is bounded like one.
MAX_SUBJECT_LENGTH = 256


class TokenVerifier:
    def __init__(self, settings: RuntimeSettings) -> None:
        self._algorithm = settings.auth_algorithm
        self._keys = VerificationKeys(settings)
        self._issuer = settings.auth_issuer or None
        self._audience = settings.auth_audience or None
        self._max_lifetime_seconds = settings.auth_max_token_lifetime_seconds
        self._leeway_seconds = settings.auth_leeway_seconds
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
        claims = self._decode(token.strip())
        if float(claims["exp"]) - time.time() > self._max_lifetime_seconds + self._leeway_seconds:
            raise unauthenticated(f"token lives longer than {self._max_lifetime_seconds} s")
        roles = claims.get("roles")
        if not isinstance(roles, list) or not roles or not set(roles) <= KNOWN_ROLES:
            raise unauthenticated(f"token roles must be a non-empty list of {sorted(KNOWN_ROLES)}")
        subject = claims["sub"]
        if not isinstance(subject, str) or not 1 <= len(subject) <= MAX_SUBJECT_LENGTH:
            raise unauthenticated(f"token sub must be a string of 1-{MAX_SUBJECT_LENGTH} characters")
        return Principal(subject=subject, roles=frozenset(roles)), float(claims["exp"])

    def _decode(self, token: str) -> dict[str, Any]:  # PyJWT's claims: JSON values, exp and sub checked present
        required = ["sub", "exp", *(["iss"] if self._issuer else []), *(["aud"] if self._audience else [])]
        try:
            return jwt.decode(
                token,
                self._keys.for_token(token),
                algorithms=[self._algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway_seconds,
                # Without an audience configured, a token naming one is still accepted (PyJWT would refuse it).
                options={"require": required, "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise unauthenticated("token expired") from None
        except jwt.InvalidTokenError as error:
            raise unauthenticated(f"invalid token: {error}") from None


class VerificationKeys:
    """The keys tokens are checked with: the HS256 secret, or public keys (inline PEM, or a PEM or JWKS file read
    again whenever it changes, so a new key can be added before tokens are signed with it)."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self._algorithm = settings.auth_algorithm
        self._secret = settings.auth_secret.get_secret_value()
        self._inline_pem = settings.auth_public_key_pem
        self._file = Path(settings.auth_public_keys_file) if settings.auth_public_keys_file else None
        self._file_version: tuple[float, int] | None = None
        self._by_kid: dict[str | None, VerificationKey] = {}

    def for_token(self, token: str) -> VerificationKey:
        if self._algorithm == "HS256":
            return self._secret
        if self._file is None:
            return self._inline_pem
        self._reload_if_changed(self._file)
        kid = jwt.get_unverified_header(token).get("kid")
        if kid in self._by_kid:
            return self._by_kid[kid]
        if len(self._by_kid) == 1:  # one key: whatever the token names, it is the only candidate
            return next(iter(self._by_kid.values()))
        raise jwt.InvalidTokenError(f"no verification key for kid {kid!r}")

    def _reload_if_changed(self, path: Path) -> None:
        """A file that cannot be read or parsed right now (being replaced, say) keeps the keys read before; with
        none read yet, tokens are refused (UNAUTHENTICATED) until it can be."""
        try:
            stat = path.stat()
            version = (stat.st_mtime, stat.st_size)
            if version == self._file_version:
                return
            text = path.read_text()
            if text.lstrip().startswith("{"):
                by_kid: dict[str | None, VerificationKey] = {
                    key.key_id: key.key for key in jwt.PyJWKSet.from_json(text).keys
                }
            else:
                by_kid = {None: text}
        except (OSError, ValueError, jwt.PyJWTError) as error:
            log.warning("verification_keys_unreadable", path=str(path), error=repr(error))
            return
        self._by_kid, self._file_version = by_kid, version


def mint_token(secret: str, subject: str, roles: list[str], ttl_seconds: int = 3600) -> str:
    """HS256 token for development, tests and service-to-service calls in a shared-secret deployment."""
    now = int(time.time())
    return jwt.encode({"sub": subject, "roles": roles, "iat": now, "exp": now + ttl_seconds}, secret, algorithm="HS256")
