"""The fake store keeps the transaction semantics the use cases rely on (so that their unit tests mean something):
writes are seen once the transaction ends cleanly and dropped when it raises; run_once keeps a final refusal with
its key but not the operation's writes."""

from __future__ import annotations

import grpc
import pytest

from services.gifts import convert, domain, ports
from services.runtime.errors import AppError, failed_precondition, unavailable
from services.runtime.requests import RequestKey
from tests.fakes.gifts import FakeGiftStore

ROSE = domain.CatalogGift("rose", "Rose", 5)
KEY = RequestKey("r1", "UpsertGift", b"fingerprint")


async def test_a_transaction_that_raises_leaves_nothing() -> None:
    store = FakeGiftStore()
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.upsert_gift(ROSE)
            assert await tx.start_stream("s1", "creator", "hi") is not None
            raise RuntimeError("crash before commit")
    assert (store.tables.catalog, store.tables.streams) == ({}, {})
    async with store.transaction() as tx:
        await tx.upsert_gift(ROSE)
    assert await store.list_active_gifts() == [ROSE]


async def test_a_final_refusal_is_kept_with_its_key_without_the_operations_writes() -> None:
    store = FakeGiftStore()

    async def refuse(tx: ports.Transaction) -> domain.CatalogGift:
        await tx.upsert_gift(ROSE)
        raise failed_precondition("NOPE", "refused after writing")

    async def must_not_run(tx: ports.Transaction) -> domain.CatalogGift:
        raise AssertionError("a kept refusal is answered from its key, without running the operation again")

    for operation in (refuse, must_not_run):
        with pytest.raises(AppError) as error:
            await store.run_once(KEY, operation, convert.GIFT_UPSERTED)
        assert (error.value.code, error.value.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOPE")
    assert store.tables.catalog == {}


async def test_an_error_that_is_no_outcome_drops_the_key_too() -> None:
    store = FakeGiftStore()

    async def outage(tx: ports.Transaction) -> domain.CatalogGift:
        raise unavailable("DOWN", "try again")

    with pytest.raises(AppError):
        await store.run_once(KEY, outage, convert.GIFT_UPSERTED)
    assert store.tables.keys == {}


async def test_one_live_stream_per_creator_is_enforced() -> None:
    store = FakeGiftStore()
    async with store.transaction() as tx:
        await tx.start_stream("s1", "creator", "hi")
        assert await tx.start_stream("s2", "creator", "again") is None
