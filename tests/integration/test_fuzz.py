"""Property-based fuzzing of every RPC of the three running services (hypothesis).

Every RPC is enumerated from the generated service descriptors and its requests are drawn from strategies derived
from its request message descriptor, so a new RPC or field is fuzzed without touching this file or the machinery in
tests/support/fuzz/ (a new RPC fails test_every_rpc_is_classified until EFFECTS says whether it moves money; a field of
a type without a strategy fails loudly). Field kinds:

- strings: by name, ids made in setup or by earlier successful calls (accounts, streams, purchases, withdrawals,
  promotions, gifts, page tokens: Ref, picked at call time), valid-looking ids, fresh and replayed request_ids,
  plausible display text with emoji; and for any string "junk": empty, up to 5,000 characters, at the documented
  limits, C0/C1 controls, bidi overrides and isolates, zero-width characters, emoji and ZWJ sequences, injection;
- integers: int64/int32 edges, small values, values at the documented bounds of fields of that name; enums: known
  and unknown numbers; repeated fields: empty, a few, 1,000 and 1,001 elements; timestamps: unset, near now, before
  year 1, after year 9999, negative or overflowing nanos;
- page tokens: real ones of this and other lists and accounts, tampered, forged (our own formats with positions out of
  range), random bytes, huge (and test_fuzz_text_and_tokens.py sends every one of them to every list);
- raw bytes that do not parse as the request type (test_fuzz_rpc_wire).

A request is plausible (often valid), plausible but for one field, or anything at all; it is sent by the owner of the
account it names, another user, a service, an admin or nobody. Every call must:

- never end INTERNAL or UNKNOWN (an unexpected exception), nor DEADLINE_EXCEEDED after 10 s (a hang);
- carry an ErrorInfo when it fails, and for INVALID_ARGUMENT a BadRequest with at least one field violation;
- move no money when it fails: around every refused call of a money-moving RPC the coins and diamonds of the fuzz
  accounts are read (GetBalance, GetEarnings) and must not have changed. Asynchronous effects of successful calls
  (settlement of a gift, a payout failing) are waited for, so they never count against the next call.

What the rest of the suite shares is left as it was: the seeded catalog and the default promotion are never touched, a
promotion or gift the fuzzer made is ended or retired at once, a fuzz account it changed is restored; each file's
fuzzer has a world of accounts of its own. test_fuzz_text_and_tokens.py checks every display-text field end to end.
The money identities across the three databases are checked at the end of the file
(test_money_identities_hold_after_fuzzing) and again by the session's stack fixture (tests/conftest.py).

Hypothesis drives plain synchronous gRPC channels: @given wraps a synchronous test, and pytest-asyncio's session loop
is not running while a synchronous test runs, so blocking calls neither need nor disturb it. Examples are derandomized
(the same every run) and no example database is written.

COINSTREAM_FUZZ_EXAMPLES: examples per RPC (default 25, about 30 s for the file on two cores; a fifth as many
raw-bytes examples), e.g. 500 for a long local run. COINSTREAM_FUZZ_SEED=<n>: random examples from that seed instead
of the derandomized ones. COINSTREAM_FUZZ_STATS=1 (with pytest -s): the outcomes per RPC and reason."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

from tests.support.fuzz.fuzzer import Fuzzer, fuzzing
from tests.support.fuzz.rpcs import RPCS, Rpc
from tests.support.fuzz.strategies import PRINCIPALS, wire_requests
from tests.support.fuzz.world import ADMIN, SERVICE
from tests.support.invariants import all_violations
from tests.support.stack import Stack

EXAMPLES = int(os.environ.get("COINSTREAM_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("COINSTREAM_FUZZ_SEED")


def test_every_rpc_is_classified() -> None:
    """A new RPC is fuzzed automatically, but the fuzzer must know whether it moves money (EFFECTS)."""
    assert [rpc.path for rpc in RPCS if rpc.effect is None] == []
    # Streams of requests are fuzzed one request per stream (Fuzzer.call_bidirectional): a client stream answered by
    # one response would need a driver of its own.
    unary_answers = [rpc.path for rpc in RPCS if rpc.method.client_streaming and not rpc.method.server_streaming]
    assert not unary_answers, "client streams need a fuzz driver"


@pytest.fixture(scope="module")
def fuzzer(stack: Stack) -> Iterator[Fuzzer]:
    with fuzzing(stack) as fuzz:
        yield fuzz


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=SEED is None,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def seeded(test: Callable) -> Callable:
    return seed(int(SEED))(test) if SEED is not None else test


@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: f"{rpc.service.split('.')[1]}.{rpc.name}")
@seeded
@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_rpc(fuzzer: Fuzzer, rpc: Rpc, data: st.DataObject) -> None:
    plan = data.draw(fuzzer.strategy(rpc), label="request")
    principal = data.draw(st.sampled_from(PRINCIPALS), label="principal")
    fuzzer.run(rpc, plan, principal)


@pytest.mark.parametrize("rpc", RPCS, ids=lambda rpc: f"{rpc.service.split('.')[1]}.{rpc.name}")
@seeded
@settings(FUZZ_SETTINGS, max_examples=max(1, EXAMPLES // 5))
@given(data=st.data())
def test_fuzz_rpc_wire(fuzzer: Fuzzer, rpc: Rpc, data: st.DataObject) -> None:
    """Requests as raw bytes that do not parse as the request type: INVALID_ARGUMENT, never UNKNOWN or INTERNAL."""
    raw = data.draw(wire_requests(rpc.method.input_type), label="raw request")
    metadata = data.draw(st.sampled_from([SERVICE, ADMIN, ()]), label="metadata")
    note(f"{rpc.path} with {raw!r}")
    fuzzer.call_and_check(rpc, raw, metadata, note)


async def test_money_identities_hold_after_fuzzing(stack: Stack) -> None:
    """The checks of `coinstream reconcile` over the three databases once settlement has caught up (the session's
    stack fixture runs them again after the last test)."""
    violations = await all_violations(stack)
    assert violations == [], "money identities broken:\n" + "\n".join(violations)
