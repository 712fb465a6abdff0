"""The App Store history pass's pure parts: the request of each sweep (its window, the watermark, Apple's 180 days),
its pagination within the bound per pass, and what ends a pass. The notifications are handed to a stand-in of the
endpoint's handling here; that handling itself (Apple's library verifying real signatures, the dedupe) is the
integration tests' (tests/integration/test_rail_app_store.py)."""

from __future__ import annotations

import os

import httpx
import pytest
from appstoreserverlibrary.api_client import APIException
from appstoreserverlibrary.models.NotificationHistoryRequest import NotificationHistoryRequest
from appstoreserverlibrary.models.NotificationHistoryResponse import NotificationHistoryResponse
from appstoreserverlibrary.models.NotificationHistoryResponseItem import NotificationHistoryResponseItem

from services.runtime.errors import unavailable
from services.runtime.http_ingress import Answer, Rejected, Unsigned
from services.wallet.stores.app_store import AppStoreSettings
from services.wallet.stores.app_store_history import (
    APPLE_KEEPS_MS,
    HOUR_MS,
    OVERLAP_MS,
    NotificationHistoryPass,
    history_request,
    next_page,
)

NOW = 1_000 * 24 * HOUR_MS
WINDOW = 72 * HOUR_MS


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("COINSTREAM_APP_STORE_")]:
        monkeypatch.delenv(name, raising=False)


def page(payloads: list[str | None], token: str | None = None) -> NotificationHistoryResponse:
    items = [NotificationHistoryResponseItem(signedPayload=p) for p in payloads]
    return NotificationHistoryResponse(paginationToken=token, hasMore=token is not None, notificationHistory=items)


class StubApi:
    """Answers the pages it is given, in order (an exception is raised), and records what it was asked."""

    def __init__(self, *pages: NotificationHistoryResponse | Exception) -> None:
        self.pages = list(pages)
        self.asked: list[tuple[str | None, NotificationHistoryRequest]] = []

    async def get_notification_history(
        self, pagination_token: str | None, notification_history_request: NotificationHistoryRequest
    ) -> NotificationHistoryResponse:
        self.asked.append((pagination_token, notification_history_request))
        answer = self.pages.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Handling:
    """Stands in for AppStoreNotifications.handle: refuses the payloads named in refuse (as the endpoint's handling
    refuses them), records the rest."""

    def __init__(self, refuse: dict[str, Exception] | None = None) -> None:
        self.refuse = refuse or {}
        self.handled: list[str] = []

    async def handle(self, signed_payload: str) -> Answer:
        if signed_payload in self.refuse:
            raise self.refuse[signed_payload]
        self.handled.append(signed_payload)
        return Answer({"outcome": "applied"})


def sweep(api: StubApi, handling: Handling, now: list[int], pages_per_pass: int = 2) -> NotificationHistoryPass:
    return NotificationHistoryPass(
        api, handling, window_ms=WINDOW, pages_per_pass=pages_per_pass, clock_ms=lambda: now[0]
    )


# --- the request --------------------------------------------------------------------------------------------------


def test_the_first_sweep_asks_for_the_failures_of_the_whole_window_up_to_now() -> None:
    assert history_request(NOW, None, WINDOW) == NotificationHistoryRequest(
        startDate=NOW - WINDOW, endDate=NOW, onlyFailures=True
    )


def test_a_later_sweep_starts_at_the_watermark_but_never_before_the_window_nor_what_apple_keeps() -> None:
    assert history_request(NOW, NOW - HOUR_MS, WINDOW).startDate == NOW - HOUR_MS
    assert history_request(NOW, NOW - 100 * HOUR_MS, WINDOW).startDate == NOW - WINDOW  # the pass was stuck
    assert history_request(NOW, None, 365 * 24 * HOUR_MS).startDate == NOW - APPLE_KEEPS_MS
    assert history_request(NOW, NOW + HOUR_MS, WINDOW).startDate == NOW - 1  # a clock set back: still a timespan


def test_the_next_page_is_apples_token_while_it_has_more() -> None:
    assert next_page(page([], "t")) == "t"
    assert next_page(page([])) is None
    assert next_page(NotificationHistoryResponse(paginationToken="t", hasMore=False)) is None


# --- the pass -----------------------------------------------------------------------------------------------------


async def test_a_sweep_reads_its_pages_within_the_bound_and_the_next_starts_where_it_began_less_the_overlap() -> None:
    now = [NOW]
    api, handling = StubApi(page(["a"], "p2"), page(["b", None], "p3"), page(["c"])), Handling()
    history = sweep(api, handling, now)

    assert await history() is True  # two pages read, a third due at once
    now[0] += 10_000
    assert await history() is False  # the sweep ended
    assert [token for token, _ in api.asked] == [None, "p2", "p3"]
    assert {request.startDate for _, request in api.asked} == {NOW - WINDOW}  # one request for the whole sweep
    assert handling.handled == ["a", "b", "c"]

    api.pages = [page([])]
    now[0] += 3_600_000
    assert await history() is False
    assert api.asked[-1] == (None, history_request(now[0], NOW - OVERLAP_MS, WINDOW))


async def test_a_payload_refused_is_skipped_and_the_rest_still_applied() -> None:
    refused = {"forged": Unsigned("does not verify"), "odd": Rejected("a notification without its notificationUUID")}
    api, handling = StubApi(page(["forged", "a", "odd"], "p2"), page(["b"])), Handling(refused)

    assert await sweep(api, handling, [NOW])() is False

    assert handling.handled == ["a", "b"]


@pytest.mark.parametrize(
    "failure",
    [APIException(429, 4290000, "Rate limit exceeded."), APIException(500), httpx.ConnectError("refused")],
    ids=["rate_limited", "apple_down", "unreachable"],
)
async def test_a_server_api_failure_ends_the_pass_and_the_next_one_sweeps_again_from_the_same_point(
    failure: Exception,
) -> None:
    now = [NOW]
    api, handling = StubApi(page([])), Handling()
    history = sweep(api, handling, now)
    assert await history() is False  # a first sweep: the watermark is NOW - OVERLAP_MS
    api.pages = [page(["a"], "p2"), failure, page(["a"], "p2"), page(["b"])]

    now[0] += HOUR_MS
    assert await history() is False  # ended, nothing raised: retried at the next interval
    now[0] += HOUR_MS
    assert await history() is False

    assert [token for token, _ in api.asked[1:]] == [None, "p2", None, "p2"]
    assert {request.startDate for _, request in api.asked[1:]} == {NOW - OVERLAP_MS}  # the watermark stayed
    assert handling.handled == ["a", "a", "b"]  # handled twice: the dedupe by notificationUUID makes it once


async def test_apples_ocsp_not_answering_ends_the_pass_without_skipping_the_notification() -> None:
    ocsp_down = unavailable("PAYMENT_PROVIDER_UNAVAILABLE", "Apple's certificate status service did not answer")
    api, handling = StubApi(page(["a", "b"]), page(["a", "b"])), Handling({"a": ocsp_down})
    history = sweep(api, handling, [NOW])

    assert await history() is False
    assert handling.handled == []  # b waits for a: the sweep starts again
    handling.refuse = {}
    assert await history() is False
    assert handling.handled == ["a", "b"]
    assert [token for token, _ in api.asked] == [None, None]


async def test_another_failure_raises_and_the_restarted_pass_sweeps_again() -> None:
    class DatabaseDown(Exception):
        pass

    api, handling = StubApi(page(["a"], "p2"), page(["a"], "p2"), page(["b"])), Handling({"a": DatabaseDown()})
    history = sweep(api, handling, [NOW])
    with pytest.raises(DatabaseDown):
        await history()
    handling.refuse = {}
    assert await history() is False  # a new sweep, from its first page
    assert [token for token, _ in api.asked] == [None, None, "p2"]
    assert handling.handled == ["a", "b"]


# --- settings -----------------------------------------------------------------------------------------------------


def test_the_history_settings_and_their_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = AppStoreSettings()
    assert (defaults.history_interval_seconds, defaults.history_window_hours, defaults.history_pages_per_pass) == (
        3600.0,
        72.0,
        10,
    )
    monkeypatch.setenv("COINSTREAM_APP_STORE_HISTORY_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("COINSTREAM_APP_STORE_HISTORY_WINDOW_HOURS", "24")
    monkeypatch.setenv("COINSTREAM_APP_STORE_HISTORY_PAGES_PER_PASS", "3")
    assert AppStoreSettings().model_dump(include={"history_interval_seconds", "history_window_hours"}) == {
        "history_interval_seconds": 0.5,
        "history_window_hours": 24.0,
    }
    monkeypatch.setenv("COINSTREAM_APP_STORE_HISTORY_WINDOW_HOURS", str(181 * 24))  # Apple keeps 180 days
    with pytest.raises(ValueError, match="HISTORY_WINDOW_HOURS|history_window_hours"):
        AppStoreSettings()
