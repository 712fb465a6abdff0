-- Payouts publishes events now (services/runtime/outbox.py): DiamondsClawedBack, for other backends, written in the
-- same transaction as the clawback it tells of.
CREATE TABLE payouts_outbox (
    outbox_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    msg_id      text NOT NULL,
    subject     text NOT NULL,
    payload     bytea NOT NULL,
    traceparent text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
