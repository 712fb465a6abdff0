"""Stripe's events as both loopback fakes keep them: each event a test makes happen at Stripe is recorded, and
GET /v1/events lists them as Stripe does (newest first, {"object": "list", "data": [...], "has_more": ...}),
honouring types[n], created[gte], starting_after and limit. Whether its webhook is delivered is the test's choice."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API_VERSION = "2025-01-27.acacia"


@dataclass
class StripeEvents:
    recorded: list[dict[str, Any]] = field(default_factory=list)  # in the order they happened
    listed: set[str] = field(default_factory=set)  # the ids of every event some list answer held
    list_calls: int = 0

    def record(self, kind: str, data_object: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
        """An event Stripe made (a snapshot of the object now), listed from now on; returns it."""
        event = {
            "id": event_id or "evt_" + secrets.token_hex(12),
            "object": "event",
            "api_version": API_VERSION,
            "created": int(time.time()),
            "data": {"object": json.loads(json.dumps(data_object))},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": kind,
        }
        self.recorded.append(event)
        return event

    def answer(self, request: web.Request) -> web.Response:
        self.list_calls += 1
        query = request.query
        types = {value for name, value in query.items() if name.startswith("types[")}
        since = int(query.get("created[gte]", "0"))
        limit = min(100, max(1, int(query.get("limit", "10"))))
        found = [e for e in reversed(self.recorded) if (not types or e["type"] in types) and e["created"] >= since]
        cursor = query.get("starting_after")
        if cursor is not None:
            ids = [e["id"] for e in found]
            if cursor not in ids:
                error = {"type": "invalid_request_error", "code": "resource_missing", "message": "No such event"}
                return web.json_response({"error": error}, status=400)
            found = found[ids.index(cursor) + 1 :]
        page = found[:limit]
        self.listed.update(e["id"] for e in page)
        return web.json_response({"object": "list", "data": page, "has_more": len(found) > limit, "url": "/v1/events"})
