"""The catch-up pass of the App Store rail: Apple does not guarantee that every App Store Server Notification
arrives (it retries a failed one for a few days, then stops), so a periodic pass reads the App Store Server API's
Get Notification History and hands each signedPayload to the very handling of POST /notifications/app-store
(AppStoreNotifications.handle): the library's SignedDataVerifier, then one effect per notificationUUID, so a
notification both pushed and fetched takes effect once.

onlyFailures=True: only the notifications Apple did not get a 2xx for, and those it is still retrying. The endpoint
answers 2xx only once a notification's effect is committed (or its notificationUUID recorded), so one Apple delivered
has nothing left to do here; asking for all of them would verify every notification of the app again each sweep, in
pages of 20 under Apple's rate limits. A notification still being retried may be both pushed and fetched: the
notificationUUID makes that once.

The signed payloads are bearer proofs of purchases: never logged, neither are Apple's error texts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import httpx
import structlog
from appstoreserverlibrary.api_client import APIException
from appstoreserverlibrary.models.NotificationHistoryRequest import NotificationHistoryRequest
from appstoreserverlibrary.models.NotificationHistoryResponse import NotificationHistoryResponse

from services.runtime.errors import AppError
from services.runtime.http_ingress import Answer, Rejected

log = structlog.get_logger()

HOUR_MS = 3_600_000
# What each sweep reads again of the one before: Apple may record a notification a little after its date.
OVERLAP_MS = HOUR_MS
# Apple answers startDate only within the last 180 days: a minute's margin for the time the request takes.
APPLE_KEEPS_MS = 180 * 24 * HOUR_MS - 60_000


class NotificationHistory(Protocol):
    """What the pass asks of the App Store Server API (app_store.AppStoreServerApi, Apple's own client)."""

    async def get_notification_history(
        self, pagination_token: str | None, notification_history_request: NotificationHistoryRequest
    ) -> NotificationHistoryResponse: ...


class SignedNotifications(Protocol):
    """The endpoint's handling of one signedPayload (app_store_notifications.AppStoreNotifications)."""

    async def handle(self, signed_payload: str) -> Answer: ...


def history_request(sweep_started_ms: int, since_ms: int | None, window_ms: int) -> NotificationHistoryRequest:
    """A sweep's request: from the previous sweep (since_ms; none yet: the whole window), never further back than
    the window nor than Apple keeps, to when the sweep began. Each page of the sweep asks the same."""
    oldest_ms = sweep_started_ms - min(window_ms, APPLE_KEEPS_MS)
    start_ms = oldest_ms if since_ms is None else min(max(oldest_ms, since_ms), sweep_started_ms - 1)
    return NotificationHistoryRequest(startDate=start_ms, endDate=sweep_started_ms, onlyFailures=True)


def next_page(page: NotificationHistoryResponse) -> str | None:
    """The paginationToken of the page after this one; None when the sweep is over."""
    return page.paginationToken if page.hasMore and page.paginationToken else None


def now_ms() -> int:
    return int(time.time() * 1000)


class NotificationHistoryPass:
    """One pass of a sweep over Get Notification History (the shape of google_play.VoidedPurchasesPass): each sweep
    reads from where the previous one began (less OVERLAP_MS), the first since start-up the whole window; a pass
    reads at most pages_per_pass pages, and a sweep longer than that goes on at once (True, "more due").

    A payload that does not verify, or is no notification we take, is logged and skipped: the rest still apply. A
    Server API failure, or Apple's OCSP not answering, ends the pass and the sweep starts again at the next interval
    (from the same point: nothing it had not read is skipped). Every replica sweeps: each notification takes effect
    once whoever finds it first."""

    def __init__(
        self,
        api: NotificationHistory,
        notifications: SignedNotifications,
        *,
        window_ms: int,
        pages_per_pass: int,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        assert window_ms > 0 and pages_per_pass > 0
        self._api = api
        self._notifications = notifications
        self._window_ms = window_ms
        self._pages_per_pass = pages_per_pass
        self._clock_ms = clock_ms
        self._since_ms: int | None = None  # where the next sweep starts (None: the window)
        self._request: NotificationHistoryRequest | None = None  # the sweep under way
        self._sweep_started_ms = 0
        self._page_token: str | None = None

    async def __call__(self) -> bool:
        if self._request is None:  # a new sweep
            self._sweep_started_ms = self._clock_ms()
            self._request = history_request(self._sweep_started_ms, self._since_ms, self._window_ms)
        try:
            return await self._pages(self._request)
        except BaseException:  # the database, say: the supervisor restarts the pass, which sweeps again
            self._request = self._page_token = None
            raise

    async def _pages(self, request: NotificationHistoryRequest) -> bool:
        for _ in range(self._pages_per_pass):
            try:
                page = await self._api.get_notification_history(self._page_token, request)
            except (APIException, httpx.HTTPError) as error:
                log.warning(
                    "app_store_history_unavailable",
                    status=getattr(error, "http_status_code", None),
                    api_error=getattr(error, "raw_api_error", None),
                    error=type(error).__name__,
                )
                return self._stop()
            for item in page.notificationHistory or []:
                if item.signedPayload and not await self._apply(item.signedPayload):
                    return self._stop()
            self._page_token = next_page(page)
            if self._page_token is None:
                self._since_ms = self._sweep_started_ms - OVERLAP_MS
                self._request = None
                return False
        return True

    async def _apply(self, signed_payload: str) -> bool:
        """Whether the sweep goes on: a notification refused is skipped, Apple's OCSP not answering stops it."""
        try:
            answer = await self._notifications.handle(signed_payload)
        except Rejected as refusal:  # Unsigned included: a forgery, or another app's, or not shaped as Apple's
            log.warning("app_store_history_notification_refused", status=refusal.status, reason=refusal.reason)
            return True
        except AppError as error:
            log.warning("app_store_history_verification_unavailable", reason=error.reason)
            return False
        except (APIException, httpx.HTTPError) as error:  # a CONSUMPTION_REQUEST's answer through the Server API
            log.warning("app_store_history_answer_failed", status=getattr(error, "http_status_code", None))
            return False
        if not answer.duplicate:
            log.info("app_store_history_notification_applied", outcome=answer.body.get("outcome"))
        return True

    def _stop(self) -> bool:
        """Ends the pass; the next interval starts the sweep again from the same point."""
        self._request = self._page_token = None
        return False
