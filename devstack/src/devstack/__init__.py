"""Local development stack: embedded PostgreSQL and nats-server from wheels, the three services, and the CLI."""
