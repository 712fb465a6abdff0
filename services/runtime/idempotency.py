"""Idempotency by request_id, in the same transaction as the state change it guards.

claim() inserts the key; a concurrent request with the same key blocks on the primary key until the first one
commits, then reads its outcome. Same payload → the stored outcome; other payload → REQUEST_ID_REUSED."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import grpc
from asyncpg.pool import PoolConnectionProxy
from google.protobuf.message import Message

from services.runtime.auth import current_principal
from services.runtime.database import Connection, Executor, Statement, placeholders
from services.runtime.errors import AppError, FieldViolation, request_id_reused
from services.runtime.requests import (
    MutatingRequest,
    Outcome,
    Reply,
    RequestKey,
    StoredRequest,
    replayed,
)

# Re-exported: the stores, which speak to this module, import them from here too.
__all__ = ["Outcome", "StoredRequest"]

Result = TypeVar("Result")

# What a key holds of its request's outcome, as _stored() reads it.
_OUTCOME_COLUMNS = "resource_id, response, error_code, error_reason, error_message, error_field_violations"


# request_ids are unique per caller (the contract): stored as "<subject>/<request_id>". A request_id cannot hold a
# "/", so the last one splits the two unambiguously: two callers choosing the same request_id never share a key, and
# no caller can learn (by a REQUEST_ID_REUSED) whether another used one.
CALLER_SEPARATOR = "/"


def caller_scoped(subject: str, request_id: str) -> str:
    return f"{subject}{CALLER_SEPARATOR}{request_id}"


def unscoped(request_id: str) -> str:
    """The request_id as the caller sent it; also the whole key of anything stored before keys were scoped."""
    return request_id.rpartition(CALLER_SEPARATOR)[2]


def scope_to_caller(request: MutatingRequest) -> None:
    """Moves a validated request_id into the authenticated caller's namespace. Servicers call it once the caller is
    authorized, before the use case, so everything below (keys, ledger and gift rows, derived ids) sees one key."""
    request.request_id = caller_scoped(current_principal().subject, request.request_id)


async def claim(
    conn: Connection, request_id: str, method: str, hashed: bytes, resource_id: str | None = None
) -> StoredRequest | None:
    """None when this call now owns the key; else what the earlier request with this key left behind."""
    inserted = await conn.fetchval(
        "INSERT INTO idempotency_keys (request_id, method, request_hash, resource_id) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (request_id) DO NOTHING RETURNING true",
        request_id,
        method,
        hashed,
        resource_id,
    )
    if inserted:
        return None
    row = await conn.fetchrow(
        f"SELECT request_hash, {_OUTCOME_COLUMNS} FROM idempotency_keys WHERE request_id = $1",
        request_id,
    )
    if row is None or bytes(row["request_hash"]) != hashed:
        # row is None only if the key expired between the two statements: treat it as reuse, never as new.
        raise request_id_reused()
    return _stored(row)


# One request of a batch: its key (request_id, RPC, fingerprint of what it asks).
Claim = RequestKey


def claim_statement(claims: list[Claim], decided: list[Outcome] | None = None, first_param: int = 1) -> Statement:
    """INSERT … RETURNING request_id: takes every key not taken yet, in request_id order (so two batches never wait
    on each other's keys in a cycle). A claim with an outcome in `decided` is stored already decided: a refusal, a
    response, or the resource it now works on."""
    ordered = sorted(claims, key=lambda claim: claim.request_id)
    assert len({claim.request_id for claim in ordered}) == len(ordered), "a batch must not hold a request_id twice"
    outcomes = {outcome.request_id: outcome for outcome in decided or ()}
    rows = [(claim, outcomes.get(claim.request_id, Outcome(claim.request_id))) for claim in ordered]
    p = placeholders(first_param, 10)
    return Statement(
        "INSERT INTO idempotency_keys (request_id, method, request_hash, resource_id, response, error_code,"
        " error_reason, error_message, error_field_violations, completed_at)"
        " SELECT k.request_id, k.method, k.request_hash, k.resource_id, k.response, k.error_code, k.error_reason,"
        "  k.error_message, k.violations::jsonb, CASE WHEN k.decided THEN now() END"
        f" FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::bytea[], {p[3]}::text[], {p[4]}::bytea[],"
        f"  {p[5]}::text[], {p[6]}::text[], {p[7]}::text[], {p[8]}::text[], {p[9]}::boolean[])"
        "  AS k (request_id, method, request_hash, resource_id, response, error_code, error_reason, error_message,"
        "        violations, decided)"
        " ORDER BY k.request_id"
        " ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
        [
            [claim.request_id for claim, _ in rows],
            [claim.method for claim, _ in rows],
            [claim.fingerprint for claim, _ in rows],
            *_outcome_columns([outcome for _, outcome in rows]),
            [outcome.response is not None or outcome.error is not None for _, outcome in rows],
        ],
    )


def _outcome_columns(outcomes: list[Outcome]) -> list[list[object]]:
    """resource_id, response, error code, reason, message and field violations (JSON), one array each."""
    return [
        [o.resource_id for o in outcomes],
        [None if o.response is None else o.response.SerializeToString() for o in outcomes],
        [None if o.error is None else o.error.code.name for o in outcomes],
        [None if o.error is None else o.error.reason for o in outcomes],
        [None if o.error is None else o.error.message for o in outcomes],
        [None if o.error is None else _violations_json(o.error) for o in outcomes],
    ]


async def earlier_outcomes(
    conn: Executor, claims: list[Claim], claimed: set[str]
) -> dict[str, StoredRequest | AppError]:
    """For the claims that did not get their key: what the earlier request left behind (or REQUEST_ID_REUSED)."""
    earlier = [claim for claim in claims if claim.request_id not in claimed]
    return await _stored_many(conn, earlier) if earlier else {}


async def _stored_many(conn: Executor, claims: list[Claim]) -> dict[str, StoredRequest | AppError]:
    rows = await conn.fetch(
        f"SELECT request_id, request_hash, {_OUTCOME_COLUMNS} FROM idempotency_keys WHERE request_id = ANY($1::text[])",
        [claim.request_id for claim in claims],
    )
    by_id = {row["request_id"]: row for row in rows}
    stored: dict[str, StoredRequest | AppError] = {}
    for claim in claims:
        row = by_id.get(claim.request_id)
        # A row gone since the insert means the key expired meanwhile: reuse, never new (as in claim()).
        if row is not None and bytes(row["request_hash"]) == claim.fingerprint:
            stored[claim.request_id] = _stored(row)
        else:
            stored[claim.request_id] = request_id_reused()
    return stored


def record_statement(outcomes: list[Outcome], first_param: int = 1) -> Statement:
    """UPDATE of claimed keys with their outcomes (a response, a final error, or the resource worked on)."""
    ordered = sorted(outcomes, key=lambda outcome: outcome.request_id)
    p = placeholders(first_param, 7)
    return Statement(
        "UPDATE idempotency_keys AS k SET"
        " resource_id = coalesce(o.resource_id, k.resource_id), response = o.response,"
        " error_code = o.error_code, error_reason = o.error_reason, error_message = o.error_message,"
        " error_field_violations = o.violations::jsonb,"
        " completed_at = CASE WHEN o.response IS NULL AND o.error_code IS NULL THEN NULL ELSE now() END"
        f" FROM unnest({p[0]}::text[], {p[1]}::text[], {p[2]}::bytea[], {p[3]}::text[], {p[4]}::text[],"
        f"  {p[5]}::text[], {p[6]}::text[])"
        "  AS o (request_id, resource_id, response, error_code, error_reason, error_message, violations)"
        " WHERE k.request_id = o.request_id",
        [[o.request_id for o in ordered], *_outcome_columns(ordered)],
    )


async def record_many(conn: Connection, outcomes: list[Outcome]) -> None:
    """record_response / record_error / set_resource for a batch, in one statement."""
    if outcomes:
        statement = record_statement(outcomes)
        await conn.execute(statement.sql, *statement.args)


def _violations_json(error: AppError) -> str:
    return json.dumps([{"field": v.field, "description": v.description} for v in error.field_violations])


async def load(conn: Executor, request_id: str) -> StoredRequest:
    """What a request left behind, read by the code that just completed it (no hash check needed)."""
    row = await conn.fetchrow(
        f"SELECT {_OUTCOME_COLUMNS} FROM idempotency_keys WHERE request_id = $1",
        request_id,
    )
    assert row is not None, f"no idempotency key {request_id}"
    return _stored(row)


async def load_many(conn: Executor, request_ids: list[str]) -> dict[str, StoredRequest]:
    """load() for many requests in one statement."""
    rows = await conn.fetch(
        f"SELECT request_id, {_OUTCOME_COLUMNS} FROM idempotency_keys WHERE request_id = ANY($1::text[])",
        request_ids,
    )
    assert len(rows) == len(set(request_ids)), f"idempotency keys missing among {request_ids}"
    return {row["request_id"]: _stored(row) for row in rows}


def _stored(row: asyncpg.Record) -> StoredRequest:
    error = None
    if row["error_code"] is not None:
        violations = [
            FieldViolation(v["field"], v["description"]) for v in json.loads(row["error_field_violations"] or "[]")
        ]
        error = AppError(grpc.StatusCode[row["error_code"]], row["error_reason"], row["error_message"], violations)
    return StoredRequest(row["resource_id"], row["response"], error)


async def replay_if_completed(pool: asyncpg.Pool, key: RequestKey, reply: Reply[Result]) -> Result | None:
    """The stored outcome of an already completed request (raised if it was an error), or None. For use cases
    that must call another service before their transaction: a replay needs no answer from it."""
    row = await pool.fetchrow(
        f"SELECT request_hash, {_OUTCOME_COLUMNS} FROM idempotency_keys WHERE request_id = $1", key.request_id
    )
    if row is None:
        return None
    if bytes(row["request_hash"]) != key.fingerprint:
        raise request_id_reused()
    stored = _stored(row)
    return None if stored.in_flight else replayed(stored, reply)


async def set_resource(conn: Connection, request_id: str, resource_id: str) -> None:
    await conn.execute("UPDATE idempotency_keys SET resource_id = $2 WHERE request_id = $1", request_id, resource_id)


async def record_response(conn: Connection, request_id: str, response: Message) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET response = $2, completed_at = now() WHERE request_id = $1",
        request_id,
        response.SerializeToString(),
    )


async def record_error(conn: Connection, request_id: str, error: AppError) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET error_code = $2, error_reason = $3, error_message = $4,"
        " error_field_violations = $5::jsonb, completed_at = now() WHERE request_id = $1",
        request_id,
        error.code.name,
        error.reason,
        error.message,
        _violations_json(error),
    )


async def run_once(
    pool: asyncpg.Pool,
    key: RequestKey,
    reply: Reply[Result],
    # A connection lent by the pool: an operation may take the wider database.Connection too.
    operation: Callable[[PoolConnectionProxy], Awaitable[Result]],
) -> Result:
    """Runs a single-transaction mutation at most once per key and stores its outcome with it (the result as its
    reply message).

    A final error (AppError.is_outcome) is stored too, with the operation's writes rolled back to a savepoint,
    so a retry gets the same error. Any other exception rolls back everything, key included: a retry runs anew."""
    outcome: Result | AppError
    async with pool.acquire() as conn, conn.transaction():
        stored = await claim(conn, key.request_id, key.method, key.fingerprint)
        if stored is not None:
            return replayed(stored, reply)
        try:
            async with conn.transaction():
                outcome = await operation(conn)
            await record_response(conn, key.request_id, reply.to_message(outcome))
        except AppError as error:
            if not error.is_outcome:
                raise
            await record_error(conn, key.request_id, error)
            outcome = error
    if isinstance(outcome, AppError):
        raise outcome
    return outcome


EXPIRED_KEYS_PER_PASS = 1000


async def delete_expired(pool: asyncpg.Pool, retention_days: int, batch_size: int = EXPIRED_KEYS_PER_PASS) -> int:
    """Forgets completed keys older than the retention (the contract promises at least 7 days)."""
    result = await pool.execute(
        "DELETE FROM idempotency_keys WHERE request_id IN ("
        " SELECT request_id FROM idempotency_keys"
        " WHERE completed_at < now() - make_interval(days => $1) LIMIT $2)",
        retention_days,
        batch_size,
    )
    return int(result.split()[-1])
