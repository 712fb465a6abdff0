"""The machinery of the property-based fuzzing of every RPC (tests/integration/test_fuzz*.py): rpcs (what is fuzzed),
strategies (requests from descriptors), world (calls, principals and the ids to call with) and fuzzer (one call and
its checks)."""
