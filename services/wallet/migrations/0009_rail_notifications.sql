-- Purchases through real rails (issue "Real money rails"): every notification or webhook a rail sends (App Store
-- Server Notifications, Google Play's real-time developer notifications, Stripe's events) is recorded by its own id
-- in the transaction that applies it, so a provider's retry, or a replay, takes effect once.
CREATE TABLE rail_notifications (
    rail text NOT NULL,
    notification_id text NOT NULL,
    kind text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rail, notification_id)
);

-- A refund or revocation of a store transaction that nobody has redeemed yet (the store's notification overtook the
-- app's redeem, or the app never redeemed it): applied by the redeem, in its transaction, right after the credit.
-- share_numerator / share_denominator: the share of the purchase's paid coins reversed in all once it applies.
CREATE TABLE early_reversals (
    rail text NOT NULL,
    notification_id text NOT NULL,
    store_transaction_id text NOT NULL,
    share_numerator bigint NOT NULL CHECK (share_numerator > 0),
    share_denominator bigint NOT NULL CHECK (share_denominator >= share_numerator),
    reason text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rail, notification_id)
);
CREATE INDEX early_reversals_by_transaction ON early_reversals (rail, store_transaction_id);

-- A store purchase credited but not yet finished at the store (Google Play: consumed; unconsumed purchases are
-- refunded by Google after 3 days): false until then; a periodic pass finishes those a crash left behind. Constant
-- default (every purchase so far needs nothing more): no rewrite.
ALTER TABLE purchases ADD COLUMN store_finished boolean NOT NULL DEFAULT true;
CREATE INDEX purchases_store_unfinished ON purchases (created_at) WHERE NOT store_finished;
