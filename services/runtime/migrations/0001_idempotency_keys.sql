-- One row per mutating request_id: the hash of the request it came with and, once decided, its outcome.
-- A row with neither response nor error is in flight; resource_id names what it is working on (a purchase, a gift).
CREATE TABLE idempotency_keys (
    request_id    text PRIMARY KEY,
    method        text NOT NULL,
    request_hash  bytea NOT NULL,
    resource_id   text,
    response      bytea,
    error_code    text,
    error_reason  text,
    error_message text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    CHECK (response IS NULL OR error_code IS NULL)
);

CREATE INDEX idempotency_keys_completed_at ON idempotency_keys (completed_at);
