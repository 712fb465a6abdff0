"""The service runtime shared by wallet, gifts and payouts: settings, logging, Postgres pool and migrations,
NATS JetStream, the gRPC server with auth / logging / error-mapping, idempotency keys and fault points."""
