"""Token verification beyond the development secret: RS256 and ES256 with a PEM key or a JWKS file of several keys
picked by kid (read again when the file changes, so keys rotate without a restart), iss and aud when configured, a
maximum lifetime, and a clock leeway."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.runtime.auth import Principal, TokenVerifier
from services.runtime.config import RuntimeSettings
from services.runtime.errors import AppError


class _Settings(RuntimeSettings):
    @property
    def service_name(self) -> str:
        return "unit"


def public_pem(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwk(private_key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, object]:
    key = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key()))
    return {**key, "kid": kid, "alg": "ES256", "use": "sig"}


def token(private_key: object, algorithm: str, *, kid: str | None = None, ttl: int = 300, **claims: object) -> str:
    now = int(time.time())
    payload = {"sub": "backend", "roles": ["service"], "iat": now, "exp": now + ttl, **claims}
    return "Bearer " + jwt.encode(payload, private_key, algorithm=algorithm, headers={"kid": kid} if kid else None)


def refused(verifier: TokenVerifier, header: str) -> str:
    with pytest.raises(AppError) as caught:
        verifier.verify(header)
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
    return caught.value.message


def test_rs256_with_a_pem_file(tmp_path: Path) -> None:
    signer, stranger = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    keys = tmp_path / "key.pem"
    keys.write_text(public_pem(signer))
    verifier = TokenVerifier(_Settings(auth_algorithm="RS256", auth_public_keys_file=str(keys)))
    assert verifier.verify(token(signer, "RS256")) == Principal("backend", frozenset({"service"}))
    refused(verifier, token(stranger, "RS256"))


def test_es256_keys_rotate_through_the_jwks_file_by_kid(tmp_path: Path) -> None:
    old, new = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    keys = tmp_path / "jwks.json"
    keys.write_text(json.dumps({"keys": [jwk(old, "2026-11")]}))
    verifier = TokenVerifier(_Settings(auth_algorithm="ES256", auth_public_keys_file=str(keys)))
    verifier.verify(token(old, "ES256", kid="2026-11"))
    refused(verifier, token(new, "ES256", kid="2026-12"))  # not published yet

    # The new key is published next to the old one: both verify, without a restart.
    keys.write_text(json.dumps({"keys": [jwk(old, "2026-11"), jwk(new, "2026-12")]}))
    verifier.verify(token(new, "ES256", kid="2026-12", ttl=301))
    verifier.verify(token(old, "ES256", kid="2026-11", ttl=302))
    assert "kid" in refused(verifier, token(new, "ES256", kid="unknown"))

    # A file caught half-written keeps the keys read before, rather than failing every call.
    keys.write_text('{"keys": [')
    verifier.verify(token(new, "ES256", kid="2026-12", ttl=303))


def test_issuer_and_audience_are_checked_when_configured() -> None:
    secret = "a-test-secret-that-is-long-enough-0123456789"
    strict = TokenVerifier(
        _Settings(auth_secret=secret, auth_issuer="https://auth.example", auth_audience="coinstream-wallet")
    )
    good = token(secret, "HS256", iss="https://auth.example", aud=["coinstream-wallet", "other"])
    assert strict.verify(good).subject == "backend"
    refused(strict, token(secret, "HS256", iss="https://evil.example", aud="coinstream-wallet"))
    refused(strict, token(secret, "HS256", iss="https://auth.example", aud="coinstream-payouts"))
    refused(strict, token(secret, "HS256"))  # neither claim
    # Without an audience configured, a token that names one is accepted (it used to be refused).
    relaxed = TokenVerifier(_Settings(auth_secret=secret))
    assert relaxed.verify(token(secret, "HS256", aud="coinstream-wallet")).subject == "backend"


def test_a_token_may_not_live_longer_than_the_maximum_and_clocks_get_a_leeway() -> None:
    secret = "a-test-secret-that-is-long-enough-0123456789"
    verifier = TokenVerifier(_Settings(auth_secret=secret, auth_max_token_lifetime_seconds=3600))
    assert "longer" in refused(verifier, token(secret, "HS256", ttl=100 * 365 * 86400))  # the 100-year admin token
    verifier.verify(token(secret, "HS256", ttl=3600))
    verifier.verify(token(secret, "HS256", ttl=-10))  # expired 10 s ago: within the 30 s leeway
    assert "expired" in refused(verifier, token(secret, "HS256", ttl=-60))
