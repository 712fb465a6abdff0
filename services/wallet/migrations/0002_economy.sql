-- Economy depth: paid and bonus coins, promotions as data, chargebacks (debt and freeze), creator giveaways,
-- self-set spending limits.

-- Coin provenance: a user's ledger account '<account_id>' is now its paid bucket, and '<account_id>:bonus' (a ':'
-- never appears in user ids) its bonus bucket. Both are kind 'user'. Existing balances stay paid coins.
INSERT INTO ledger_accounts (ledger_account_id, kind)
SELECT ledger_account_id || ':bonus', 'user' FROM ledger_accounts WHERE kind = 'user'
ON CONFLICT DO NOTHING;

-- Negative balances only by reversal: no update may take a user bucket below zero, or further below zero, unless
-- the transaction said it may (ReversePurchase alone does, with set_config(..., true), i.e. SET LOCAL).
ALTER TABLE ledger_accounts DROP CONSTRAINT user_coins_not_negative;

CREATE FUNCTION user_coins_never_negative() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind = 'user' AND NEW.coins < 0
       AND (TG_OP = 'INSERT' OR NEW.coins < OLD.coins)
       AND coalesce(current_setting('coinstream.allow_debt', true), '') <> 'on' THEN
        RAISE EXCEPTION 'user ledger account % would go to % coins', NEW.ledger_account_id, NEW.coins
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER ledger_accounts_no_debt BEFORE INSERT OR UPDATE OF coins ON ledger_accounts
    FOR EACH ROW EXECUTE FUNCTION user_coins_never_negative();

-- New movements: purchase reversals (chargebacks) and giveaways (sent by transactions.account_id, received by
-- the other user accounts posted to).
ALTER TABLE transactions DROP CONSTRAINT transactions_kind_check;
ALTER TABLE transactions ADD CONSTRAINT transactions_kind_check
    CHECK (kind IN ('purchase', 'spend', 'reversal', 'giveaway'));

-- The rolling-24 h spending limit sums what an account sent by its own action.
CREATE INDEX transactions_owner_spending ON transactions (account_id, created_at)
    WHERE kind IN ('spend', 'giveaway');
-- Point-in-time balances: a bucket's last posting at or before a moment.
CREATE INDEX postings_as_of ON postings (ledger_account_id, created_at DESC, posting_id DESC);

-- Self-set spending limit (0 = none). A raise or a removal waits 24 h as a pending change, applied when read.
ALTER TABLE accounts
    ADD COLUMN daily_limit_coins bigint NOT NULL DEFAULT 0 CHECK (daily_limit_coins >= 0),
    ADD COLUMN pending_daily_limit_coins bigint CHECK (pending_daily_limit_coins >= 0),
    ADD COLUMN pending_limit_effective_at timestamptz,
    ADD CONSTRAINT pending_limit_complete
        CHECK ((pending_daily_limit_coins IS NULL) = (pending_limit_effective_at IS NULL));

-- Promotions as data. The contract's +5 % rule is the seeded default.
CREATE TABLE promotions (
    promotion_id         text PRIMARY KEY,
    position             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,  -- newest first, and page tokens
    name                 text NOT NULL,
    starts_at            timestamptz NOT NULL,
    ends_at              timestamptz,
    min_package_coins    bigint NOT NULL CHECK (min_package_coins >= 0),
    bonus_percent        integer CHECK (bonus_percent BETWEEN 1 AND 100),
    bonus_coins          bigint CHECK (bonus_coins BETWEEN 1 AND 1000000),
    first_purchase_only  boolean NOT NULL DEFAULT false,
    max_uses_per_account integer NOT NULL DEFAULT 0 CHECK (max_uses_per_account >= 0),
    created_at           timestamptz NOT NULL DEFAULT now(),
    CHECK ((bonus_percent IS NULL) <> (bonus_coins IS NULL)),
    -- ends_at = starts_at only for a promotion ended before it opened (an empty window).
    CHECK (ends_at IS NULL OR ends_at >= starts_at)
);

INSERT INTO promotions (promotion_id, name, starts_at, min_package_coins, bonus_percent, created_at)
VALUES ('promo_default', '+5% on packages of 1,321 coins or more', '2020-01-01T00:00:00Z', 1321, 5,
        '2020-01-01T00:00:00Z');

-- Each purchase keeps the promotion that applied; ending a promotion never changes past purchases.
ALTER TABLE purchases ADD COLUMN promotion_id text REFERENCES promotions (promotion_id);
UPDATE purchases SET promotion_id = 'promo_default' WHERE bonus_coins > 0;
ALTER TABLE purchases ADD CHECK ((promotion_id IS NULL) = (bonus_coins = 0));
-- First-purchase-only and per-account use limits count an account's purchases.
CREATE INDEX purchases_account ON purchases (account_id, promotion_id) WHERE status IN ('pending', 'completed');

-- One reversal per purchase, whatever the request_id.
CREATE TABLE purchase_reversals (
    purchase_id    text PRIMARY KEY REFERENCES purchases (purchase_id),
    request_id     text NOT NULL UNIQUE,
    transaction_id text NOT NULL REFERENCES transactions (transaction_id),
    reason         text NOT NULL,
    paid_coins     bigint NOT NULL CHECK (paid_coins >= 0),
    bonus_coins    bigint NOT NULL CHECK (bonus_coins >= 0),
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE giveaways (
    giveaway_id      text PRIMARY KEY,
    request_id       text NOT NULL UNIQUE,
    creator_id       text NOT NULL REFERENCES accounts (account_id),
    coins_per_winner bigint NOT NULL CHECK (coins_per_winner > 0),
    winner_ids       text[] NOT NULL CHECK (cardinality(winner_ids) BETWEEN 1 AND 1000),
    transaction_id   text NOT NULL REFERENCES transactions (transaction_id),
    created_at       timestamptz NOT NULL DEFAULT now()
);
