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

-- Accounts frozen before payouts could hear of it: announced now, version 1, through the outbox like every change.
-- The payload is coinstream.events.v1.AccountStatusChanged{account_id, frozen: true, version: 1} in protobuf's wire
-- format, written here byte by byte: field 1 (0x0a, length, the id: 1-64 ASCII characters, so the length is one byte),
-- field 2 = true (0x10 0x01), field 3 = 1 (0x18 0x01).
UPDATE accounts SET status_version = 1 WHERE status = 'frozen';
INSERT INTO wallet_outbox (msg_id, subject, payload)
SELECT 'account_status:' || account_id || ':1', 'wallet.v1.account_status_changed',
       '\x0a'::bytea || set_byte('\x00'::bytea, 0, octet_length(account_id)) || convert_to(account_id, 'UTF8')
       || '\x10011801'::bytea
FROM accounts WHERE status = 'frozen' ORDER BY account_id;
