-- The wallet publishes events now (services/runtime/outbox.py): PurchaseReversed for payouts' clawbacks, and
-- AccountStatusChanged so payouts refuses withdrawals of frozen accounts without reading this database.

-- Events written in the same transaction as the change they tell of; the relay publishes them in outbox_id order
-- and deletes each once JetStream acknowledged it.
CREATE TABLE wallet_outbox (
    outbox_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    msg_id      text NOT NULL,
    subject     text NOT NULL,
    payload     bytea NOT NULL,
    traceparent text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Each change of an account's status gets the next version, so a consumer applies only the newest it has seen.
ALTER TABLE accounts ADD COLUMN status_version bigint NOT NULL DEFAULT 0;
