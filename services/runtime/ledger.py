"""Double entry, one set of rules for the coin ledger (wallet) and the diamond ledger (payouts).

A ledger transaction is a list of postings (ledger account, signed amount) summing to zero: value is only ever
moved, never made or lost. A leg that moves nothing is left out (a posting always moves something, and both
ledgers' tables refuse a zero amount), and no account appears twice in one transaction (its legs are summed first).

The database guards the same rules (the triggers of services/runtime/migrations/0003_ledger.sql, with 0004's check,
attached to each service's own tables): postings and transactions are append-only, and each INSERT statement must
leave every transaction it touched balanced, which is why a store writes all postings of a transaction in one
statement. The check reads only the touched transactions' postings, whatever the ledger's size."""

from __future__ import annotations

from collections.abc import Iterable

Posting = tuple[str, int]  # (ledger account id, signed amount in the ledger's unit: coins or diamonds)


class UnbalancedTransaction(ValueError):
    """A bug, never the caller's fault: the use case built postings that would make or lose value."""


def balanced(postings: Iterable[Posting]) -> list[Posting]:
    """The postings of one ledger transaction, zero legs left out, in their given order; raises
    UnbalancedTransaction if they do not sum to zero or name an account twice."""
    legs = list(postings)
    moving = [(account, amount) for account, amount in legs if amount != 0]
    if sum(amount for _, amount in moving) != 0:
        raise UnbalancedTransaction(f"postings do not sum to zero: {legs}")
    if len({account for account, _ in moving}) != len(moving):
        raise UnbalancedTransaction(f"one ledger account twice in {legs}")
    return moving
