"""Page tokens (services/runtime/pages.py): bound to their list and owner; release 0.1.0's tokens still read."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import grpc
import pytest

from services.runtime import pages
from services.runtime.errors import AppError


def refused(decode: Callable[[], object]) -> None:
    """The decode fails as a bad page_token: INVALID_ARGUMENT naming the field."""
    with pytest.raises(AppError) as caught:
        decode()
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [violation.field for violation in caught.value.field_violations] == ["page_token"]


def test_a_token_reads_back_only_for_its_list_and_owner() -> None:
    token = pages.encode_page_token("transactions", "alice", [42])
    assert pages.decode_page_token(token, kind="transactions", owner="alice", shape=(int,)) == [42]
    refused(lambda: pages.decode_page_token(token, kind="promotions", owner="alice", shape=(int,)))
    refused(lambda: pages.decode_page_token(token, kind="transactions", owner="bob", shape=(int,)))


def test_release_0_1_0_tokens_still_read() -> None:
    wallet = base64.urlsafe_b64encode(b"p:42").decode()
    assert pages.decode_page_token(wallet, kind="transactions", owner="a", shape=(int,), legacy_kind="p") == [42]
    # another list's legacy kind
    refused(lambda: pages.decode_page_token(wallet, kind="promotions", owner="", shape=(int,), legacy_kind="m"))
    payouts = base64.urlsafe_b64encode(json.dumps({"k": "day", "c": "creator", "p": ["2026-11-29"]}).encode()).decode()
    assert pages.decode_page_token(payouts, kind="day", owner="creator", shape=(str,)) == ["2026-11-29"]
    refused(lambda: pages.decode_page_token(payouts, kind="day", owner="other", shape=(str,)))


@pytest.mark.parametrize("token", ["%%%", base64.urlsafe_b64encode(b"[1]").decode(), "e30=", "cDox"])
def test_forged_tokens_are_invalid_argument(token: str) -> None:
    refused(lambda: pages.decode_page_token(token, kind="transactions", owner="a", shape=(str,), legacy_kind="p"))
