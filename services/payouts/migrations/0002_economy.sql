-- Economy depth: a maturity hold on gift diamonds (a pending ledger account per creator), exact rounding at any rate
-- (a carried fraction per creator and rate version), canceled withdrawals, creator statements, and the cash behind
-- each gift (paid and bonus coins) on its credit.

-- New ledger movements: matured credits (pending → available) and canceled withdrawals (reserved → available).
ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_kind_check;
ALTER TABLE ledger_transactions ADD CONSTRAINT ledger_transactions_kind_check CHECK (
    kind IN ('settlement', 'maturity', 'withdrawal_reserve', 'withdrawal_paid', 'withdrawal_returned',
             'withdrawal_canceled')
);

ALTER TABLE postings DROP CONSTRAINT postings_ledger_account_id_check;
ALTER TABLE postings ADD CONSTRAINT postings_ledger_account_id_check CHECK (
    ledger_account_id ~ '^(system:(gift_settlement|paid_out)|creator:[A-Za-z0-9_-]{1,64}:(pending|available|reserved))$'
);

-- The third ledger account of a creator, 'creator:<id>:pending': diamonds still in their maturity hold.
ALTER TABLE creator_balances
    ADD COLUMN pending_diamonds bigint NOT NULL DEFAULT 0 CHECK (pending_diamonds >= 0);

-- available_at: when the credit's diamonds become withdrawable (= created_at without a hold).
-- matured_at: when they did; NULL while pending. A credit settled without a hold is available at once
-- (matured_at = created_at, no maturity transaction); a held one is moved by a 'maturity' transaction.
-- paid_coins / bonus_coins: how the sender paid for the gift (may be 0 while the gifts side does not send them).
-- Credits from before the hold existed were available at once: they get this migration's time as available_at and
-- matured_at, through constant defaults PostgreSQL keeps in its catalog (no rewrite of the table, no long lock).
ALTER TABLE diamond_credits
    ADD COLUMN paid_coins bigint NOT NULL DEFAULT 0 CHECK (paid_coins >= 0),
    ADD COLUMN bonus_coins bigint NOT NULL DEFAULT 0 CHECK (bonus_coins >= 0),
    ADD COLUMN available_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN matured_at timestamptz DEFAULT now(),
    ADD COLUMN maturity_transaction_id text REFERENCES ledger_transactions (transaction_id),
    ADD CHECK (maturity_transaction_id IS NULL OR matured_at IS NOT NULL);
-- From now on settlement always says whether a credit is held.
-- The default stays: a replica of the previous release still running during a rolling deploy inserts credits
-- without matured_at, and they are available at once in that release, so matured is the truth for them.

-- The append-only guard is replaced by one that allows exactly the maturing of a pending credit.
DROP TRIGGER diamond_credits_append_only ON diamond_credits;

-- A credit never changes, except that a pending one matures once (matured_at and its transaction set together).
CREATE FUNCTION diamond_credit_changes_allowed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'the ledger is append-only (DELETE on diamond_credits)';
    END IF;
    IF OLD.matured_at IS NOT NULL OR NEW.matured_at IS NULL OR NEW.maturity_transaction_id IS NULL
       OR (NEW.gift_transaction_id, NEW.creator_id, NEW.stream_id, NEW.coins, NEW.diamonds, NEW.rate_version,
           NEW.transaction_id, NEW.created_at, NEW.paid_coins, NEW.bonus_coins, NEW.available_at)
          IS DISTINCT FROM
          (OLD.gift_transaction_id, OLD.creator_id, OLD.stream_id, OLD.coins, OLD.diamonds, OLD.rate_version,
           OLD.transaction_id, OLD.created_at, OLD.paid_coins, OLD.bonus_coins, OLD.available_at) THEN
        RAISE EXCEPTION 'the ledger is append-only (UPDATE on diamond_credits: only a pending credit may mature, once)';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER diamond_credits_guarded BEFORE UPDATE OR DELETE ON diamond_credits
    FOR EACH ROW EXECUTE FUNCTION diamond_credit_changes_allowed();

-- The maturity worker's scan (oldest due first), the per-creator maturing in a withdrawal, and the statements.
CREATE INDEX diamond_credits_maturing ON diamond_credits (available_at) WHERE matured_at IS NULL;
CREATE INDEX diamond_credits_maturing_by_creator ON diamond_credits (creator_id, available_at)
    WHERE matured_at IS NULL;
CREATE INDEX diamond_credits_by_stream ON diamond_credits (creator_id, stream_id);

-- Exact rounding: the fraction of a diamond (in 1/denominator units) carried from a creator's last gift at a rate
-- version to the next. A new rate version starts from 0, so per creator and version the credits always sum to
-- floor(total coins × numerator / denominator). Only kept for rates with a denominator above 1.
CREATE TABLE settlement_carries (
    creator_id   text NOT NULL,
    rate_version integer NOT NULL REFERENCES settlement_rates (version),
    remainder    bigint NOT NULL CHECK (remainder >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (creator_id, rate_version)
);

-- A creator's withdrawals, newest first.
CREATE INDEX withdrawals_by_creator ON withdrawals (creator_id, created_at DESC, withdrawal_id DESC);
