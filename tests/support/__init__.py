"""Everything the tests share besides fixtures (those are in tests/conftest.py). A test module imports from here,
never from another test module.

- stack: the system under test (PostgreSQL, nats-server, the three services) and the suite's settings;
- clients: gRPC stubs, call metadata with minted tokens (SERVICE, ADMIN, auth), unique ids;
- errors: expecting a failed call and reading its ErrorInfo, BadRequest and RetryInfo;
- factories: wallet accounts, coins and the answers wallet tests compare;
- gifts: streams, gift requests, summaries, a watcher of the live feed; load: a gift load riding out faults;
- payouts: GiftSent published straight to JetStream, settlement, withdrawals, dead letters, the payouts ledger;
- events: what the services published to JetStream; invariants: the money identities (`coinstream reconcile`);
- crashes: the gifts service killed at a crash point and started again;
- chaos: seeded faults over a random workload (`python -m tests.support.chaos`, `make soak`);
- fuzz: the machinery of the property-based fuzzing of every RPC;
- readme: the README's example, for the tests that run it as a user would."""
