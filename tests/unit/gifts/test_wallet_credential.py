"""The token gifts presents to the wallet: from a file reread on rotation, a fixed one, or minted; always for the
subject the wallet keys gifts' spends under."""

from __future__ import annotations

import os
from pathlib import Path

import jwt
import pytest

from services.gifts import wallet_credential
from services.gifts.wallet_credential import ServiceToken
from services.runtime.auth import mint_token
from services.runtime.errors import AppError

SECRET = "unit-test-secret-at-least-32-bytes-long"
SUBJECT = "coinstream-gifts"


@pytest.fixture(autouse=True)
def look_at_the_file_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wallet_credential, "TOKEN_FILE_CHECK_SECONDS", 0.0)


def token_for(subject: str, ttl_seconds: int = 3600) -> str:
    return mint_token(SECRET, subject, ["service"], ttl_seconds=ttl_seconds)


def write(path: Path, token: str, bump_seconds: int) -> None:
    path.write_text(token + "\n")
    stamp = 1_700_000_000 + bump_seconds  # a distinct mtime, as a rotation by a Secret mount gives
    os.utime(path, (stamp, stamp))


def bearer_subject(credential: ServiceToken) -> str:
    return jwt.decode(credential.authorization().removeprefix("Bearer "), options={"verify_signature": False})["sub"]


def test_a_rotated_token_file_is_used_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "token"
    first, second = token_for(SUBJECT, 100), token_for(SUBJECT, 200)
    write(path, first, 0)
    credential = ServiceToken(SUBJECT, token_file=str(path))
    assert credential.authorization() == f"Bearer {first}"
    write(path, second, 1)
    assert credential.authorization() == f"Bearer {second}"


def test_a_token_for_another_subject_or_garbage_keeps_the_previous_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    good = token_for(SUBJECT)
    write(path, good, 0)
    credential = ServiceToken(SUBJECT, token_file=str(path))
    credential.authorization()
    write(path, token_for("someone-else"), 1)
    assert credential.authorization() == f"Bearer {good}"
    write(path, "not a jwt", 2)
    assert credential.authorization() == f"Bearer {good}"
    path.unlink()
    assert credential.authorization() == f"Bearer {good}"


def test_no_usable_token_yet_is_unavailable_so_gifts_stay_pending(tmp_path: Path) -> None:
    credential = ServiceToken(SUBJECT, token_file=str(tmp_path / "missing"))
    with pytest.raises(AppError) as error:
        credential.authorization()
    assert error.value.reason == "WALLET_CREDENTIAL_MISSING"


def test_a_fixed_token_for_another_subject_is_a_start_up_error() -> None:
    with pytest.raises(ValueError, match="COINSTREAM_GIFTS_WALLET_SUBJECT"):
        ServiceToken(SUBJECT, token=token_for("someone-else"))
    assert bearer_subject(ServiceToken(SUBJECT, token=token_for(SUBJECT))) == SUBJECT


def test_without_a_given_token_one_is_minted_for_the_subject() -> None:
    assert bearer_subject(ServiceToken(SUBJECT, auth_secret=SECRET)) == SUBJECT
