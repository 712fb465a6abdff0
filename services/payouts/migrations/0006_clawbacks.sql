-- Chargebacks follow the money: a reversed purchase's coins take back the diamonds their gifts earned (clawbacks),
-- from the gift's diamonds still held first, then available ones, the rest as the creator's debt, which later credits
-- repay first. And payouts learns from the wallet's events which accounts are frozen.

-- New ledger movements and accounts: 'clawback' (creator pending/available/debt → system:clawed_back) and
-- 'debt_repayment' (available → debt); 'creator:<id>:debt' holds minus what the creator owes.
-- The new CHECKs are NOT VALID (no scan of a hot table under its exclusive lock: the rows there met the older, stricter
-- ones); 0008 validates them under a lock that lets settlement and withdrawals go on.
ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_kind_check;
ALTER TABLE ledger_transactions ADD CONSTRAINT ledger_transactions_kind_check CHECK (
    kind IN ('settlement', 'maturity', 'withdrawal_reserve', 'withdrawal_paid', 'withdrawal_returned',
             'withdrawal_canceled', 'clawback', 'debt_repayment')
) NOT VALID;

ALTER TABLE postings DROP CONSTRAINT postings_ledger_account_id_check;
ALTER TABLE postings ADD CONSTRAINT postings_ledger_account_id_check CHECK (
    ledger_account_id ~ '^(system:(gift_settlement|paid_out|clawed_back)|creator:[A-Za-z0-9_-]{1,64}:(pending|available|reserved|debt))$'
) NOT VALID;

-- Constant defaults: kept in the catalog, no rewrite of the tables.
ALTER TABLE creator_balances
    ADD COLUMN debt_diamonds bigint NOT NULL DEFAULT 0,
    ADD COLUMN clawed_back_diamonds bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT creator_balances_debt_diamonds_check CHECK (debt_diamonds >= 0) NOT VALID,
    ADD CONSTRAINT creator_balances_clawed_back_diamonds_check CHECK (clawed_back_diamonds >= 0) NOT VALID;

-- Diamonds of a credit still in its hold that a clawback took: maturity moves only the rest.
ALTER TABLE diamond_credits
    ADD COLUMN held_clawed_back bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT diamond_credits_held_clawed_back_check
        CHECK (held_clawed_back >= 0 AND held_clawed_back <= diamonds) NOT VALID;

-- A credit never changes, except that a pending one matures once, and that a clawback takes more of a pending one's
-- diamonds (held_clawed_back only grows, and only before it matures). Replaced in place: the trigger keeps calling it.
CREATE OR REPLACE FUNCTION diamond_credit_changes_allowed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'the ledger is append-only (DELETE on diamond_credits)';
    END IF;
    IF (NEW.gift_transaction_id, NEW.creator_id, NEW.stream_id, NEW.video_id, NEW.coins, NEW.diamonds,
        NEW.rate_version, NEW.transaction_id, NEW.created_at, NEW.paid_coins, NEW.bonus_coins, NEW.available_at)
       IS DISTINCT FROM
       (OLD.gift_transaction_id, OLD.creator_id, OLD.stream_id, OLD.video_id, OLD.coins, OLD.diamonds,
        OLD.rate_version, OLD.transaction_id, OLD.created_at, OLD.paid_coins, OLD.bonus_coins, OLD.available_at)
       OR OLD.matured_at IS NOT NULL
       OR NEW.held_clawed_back < OLD.held_clawed_back
       OR (NEW.matured_at IS NULL) <> (NEW.maturity_transaction_id IS NULL)
       OR (NEW.matured_at IS NOT NULL AND NEW.held_clawed_back <> OLD.held_clawed_back) THEN
        RAISE EXCEPTION 'the ledger is append-only (UPDATE on diamond_credits: only a pending credit may mature, once,'
            ' or lose held diamonds to a clawback)';
    END IF;
    RETURN NEW;
END $$;

-- One row per gift a reversal traced coins to (wallet.v1.purchase_reversed). Received before its gift is settled it
-- waits (applied_at NULL) and is applied when the gift settles; applied, it records what it took and from where.
CREATE TABLE clawbacks (
    reversal_id         text NOT NULL,
    gift_transaction_id text NOT NULL,
    purchase_id         text NOT NULL,
    -- The coins the wallet traced to the gift; once applied, those taken (never beyond the gift's coins: 0 when
    -- earlier clawbacks took them all, which reconcile reports).
    coins               bigint NOT NULL CHECK (coins >= 0),
    received_at         timestamptz NOT NULL DEFAULT now(),
    creator_id          text,
    rate_version        integer REFERENCES settlement_rates (version),
    diamonds            bigint CHECK (diamonds >= 0),
    from_pending        bigint CHECK (from_pending >= 0),
    from_available      bigint CHECK (from_available >= 0),
    to_debt             bigint CHECK (to_debt >= 0),
    transaction_id      text REFERENCES ledger_transactions (transaction_id),
    applied_at          timestamptz,
    PRIMARY KEY (reversal_id, gift_transaction_id),
    CHECK ((applied_at IS NULL) = (transaction_id IS NULL)),
    CHECK (applied_at IS NULL OR diamonds = from_pending + from_available + to_debt)
);
-- Settlement looks for the clawbacks waiting on the gifts it credits; statements list a creator's, newest first.
CREATE INDEX clawbacks_waiting ON clawbacks (gift_transaction_id) WHERE applied_at IS NULL;
CREATE INDEX clawbacks_by_creator ON clawbacks (creator_id, applied_at DESC, gift_transaction_id)
    WHERE applied_at IS NOT NULL;

-- The wallet's events applied, by Nats-Msg-Id: each exactly once however often JetStream delivers it.
CREATE TABLE wallet_event_inbox (
    msg_id      text PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Accounts as the wallet's AccountStatusChanged said, the newest version applied: a frozen one cannot withdraw.
CREATE TABLE wallet_account_status (
    account_id text PRIMARY KEY,
    frozen     boolean NOT NULL,
    version    bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
