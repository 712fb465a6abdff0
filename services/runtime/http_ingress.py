"""The HTTP port a service serves beside gRPC, for the calls that providers make to us (App Store and Google Play
notifications, Stripe and PayPal webhooks), on aiohttp.

A provider retries until it gets a 2xx, so the answer is what makes a notification take effect exactly once:
- 2xx only after the effect is committed (or was already: each notification is deduplicated by its own id in the
  same database transaction as its effect);
- 4xx when the notification is refused as it stands (a bad signature, a body that is no notification): nothing moved,
  and a retry of the same bytes would be refused again;
- 5xx when the effect could not be committed (the database, a provider API timing out): the sender retries later.

Every endpoint is a Notification handler: it gets the raw body (signatures are over the exact bytes) and the
headers, and returns what to answer; Rejected is its 4xx. Anything else it raises is a 5xx, logged with the
endpoint. GET /healthz answers 200 while the service is ready (its database answers) and 503 otherwise, GET /livez
200 while the process runs: a load balancer's or Kubernetes' HTTP probes."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import Counter

log = structlog.get_logger()

NOTIFICATIONS = Counter(
    "coinstream_http_notifications_total",
    "Provider notifications and webhooks received, by endpoint and answer (applied, duplicate, rejected, failed)",
    ["endpoint", "outcome"],
)


@dataclass(frozen=True)
class Answer:
    """What a handler answers once its notification's effect is committed. duplicate: it had been applied before."""

    body: Mapping[str, Any] = field(default_factory=dict)
    status: int = 200
    duplicate: bool = False


class Rejected(Exception):
    """A notification refused as it stands (nothing moved): 401 for a signature that does not verify, 400 for a
    body that is not a notification we take. The reason is answered to the sender and logged; it never holds a
    secret."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Unsigned(Rejected):
    def __init__(self, reason: str) -> None:
        super().__init__(reason, 401)


Handler = Callable[[bytes, Mapping[str, str]], Awaitable[Answer]]


class HttpIngress:
    """POST endpoints for providers, health endpoints, and nothing else, on one port. Bodies over max_body_bytes
    are refused 413 before a handler sees them."""

    def __init__(
        self,
        host: str,
        port: int,
        max_body_bytes: int,
        ssl_context: ssl.SSLContext | None,
        is_ready: Callable[[], bool],
    ) -> None:
        self._host, self._port, self._ssl = host, port, ssl_context
        self._is_ready = is_ready
        self._app = web.Application(client_max_size=max_body_bytes)
        self._app.router.add_get("/healthz", self._healthz)
        self._app.router.add_get("/livez", self._livez)
        self._runner: web.AppRunner | None = None
        self.bound_port = 0

    def add_endpoint(self, path: str, handler: Handler) -> None:
        """Must be called before start()."""

        async def serve(request: web.Request) -> web.Response:
            return await self._serve(path, handler, request)

        self._app.router.add_post(path, serve)

    async def start(self) -> None:
        # access_log off: structlog logs every notification with its outcome below; aiohttp's own line would log
        # again, unstructured.
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl, reuse_address=True)
        await site.start()
        self.bound_port = self._runner.addresses[0][1]  # port 0 picks a free one (tests)
        log.info("http_listening", address=f"{self._host}:{self.bound_port}", tls=self._ssl is not None)

    async def stop(self) -> None:
        """Requests in flight finish (their effects commit, their answers go out); new connections are refused."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, endpoint: str, handler: Handler, request: web.Request) -> web.Response:
        if not self._is_ready():  # the database is not there yet, or gone: the sender retries later
            return _answer(endpoint, "failed", 503, {"error": "not ready"})
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _answer(endpoint, "rejected", 413, {"error": "body too large"})
        headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            answer = await handler(body, headers)
        except Rejected as refusal:
            log.warning("notification_rejected", endpoint=endpoint, reason=refusal.reason, status=refusal.status)
            return _answer(endpoint, "rejected", refusal.status, {"error": refusal.reason})
        except Exception:
            log.exception("notification_failed", endpoint=endpoint)
            return _answer(endpoint, "failed", 500, {"error": "not applied; retry later"})
        return _answer(endpoint, "duplicate" if answer.duplicate else "applied", answer.status, answer.body)

    async def _healthz(self, _: web.Request) -> web.Response:
        ready = self._is_ready()
        return web.json_response({"status": "SERVING" if ready else "NOT_SERVING"}, status=200 if ready else 503)

    async def _livez(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "SERVING"})


def _answer(endpoint: str, outcome: str, status: int, body: Mapping[str, Any]) -> web.Response:
    NOTIFICATIONS.labels(endpoint, outcome).inc()
    return web.json_response(dict(body), status=status)
