-- Payouts: gifts settled into creator diamonds (versioned rates, an inbox for exactly-once settlement),
-- a double-entry diamond ledger, creator profiles and withdrawals.

-- Settlement rates are configuration with history: each change is a new version, and every diamond credit names
-- the version it was computed with, so any credit can be re-derived and audited later.
CREATE TABLE settlement_rates (
    version     integer PRIMARY KEY CHECK (version > 0),
    numerator   bigint NOT NULL CHECK (numerator > 0),
    denominator bigint NOT NULL CHECK (denominator > 0),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE creator_profiles (
    creator_id         text PRIMARY KEY,
    kyc_verified       boolean NOT NULL,
    payout_destination text NOT NULL CHECK (char_length(payout_destination) BETWEEN 1 AND 256),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- A creator's two ledger accounts, 'creator:<id>:available' and 'creator:<id>:reserved', kept as one row (the row a
-- withdrawal locks), plus lifetime earnings. Created lazily by the first settlement: creators may earn before they
-- have a profile. The platform's accounts ('system:*') have no row: their balances are the sums of their postings,
-- so settlement never waits on a hot platform row.
CREATE TABLE creator_balances (
    creator_id         text PRIMARY KEY,
    available_diamonds bigint NOT NULL DEFAULT 0 CHECK (available_diamonds >= 0),
    reserved_diamonds  bigint NOT NULL DEFAULT 0 CHECK (reserved_diamonds >= 0),
    lifetime_diamonds  bigint NOT NULL DEFAULT 0 CHECK (lifetime_diamonds >= 0),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger_transactions (
    transaction_id text PRIMARY KEY,
    kind           text NOT NULL
        CHECK (kind IN ('settlement', 'withdrawal_reserve', 'withdrawal_paid', 'withdrawal_returned')),
    reference      text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE postings (
    posting_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id    text NOT NULL REFERENCES ledger_transactions (transaction_id),
    ledger_account_id text NOT NULL CHECK (
        ledger_account_id ~ '^(system:(gift_settlement|paid_out)|creator:[A-Za-z0-9_-]{1,64}:(available|reserved))$'
    ),
    diamonds_delta    bigint NOT NULL CHECK (diamonds_delta <> 0),
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX postings_account ON postings (ledger_account_id, posting_id);
CREATE INDEX postings_transaction ON postings (transaction_id);

-- The database guards double entry too. The store writes all postings of a ledger transaction in one statement,
-- so each INSERT statement must leave every transaction it touched summing to zero. A statement-level check reads
-- each transaction's postings once (a per-row check would re-sum a 500-creator settlement 500 times).
CREATE FUNCTION postings_must_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced text;
BEGIN
    SELECT p.transaction_id INTO unbalanced
    FROM postings AS p
    WHERE p.transaction_id IN (SELECT DISTINCT transaction_id FROM new_postings)
    GROUP BY p.transaction_id
    HAVING sum(p.diamonds_delta) <> 0
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', unbalanced USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER postings_balanced AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION postings_must_balance();

-- Exactly-once settlement: GiftSent arrives at least once; a gift counts only when its id first enters the inbox,
-- in the same transaction as its credit.
CREATE TABLE inbox (
    gift_transaction_id text PRIMARY KEY,
    received_at         timestamptz NOT NULL DEFAULT now()
);

-- One row per settled gift: what it paid, what it earned and at which rate. diamonds may be 0 when a fractional rate
-- floors a small gift away (see domain.SettlementRate).
CREATE TABLE diamond_credits (
    gift_transaction_id text PRIMARY KEY REFERENCES inbox (gift_transaction_id),
    creator_id          text NOT NULL,
    stream_id           text NOT NULL,
    coins               bigint NOT NULL CHECK (coins > 0),
    diamonds            bigint NOT NULL CHECK (diamonds >= 0),
    rate_version        integer NOT NULL REFERENCES settlement_rates (version),
    transaction_id      text NOT NULL REFERENCES ledger_transactions (transaction_id),
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX diamond_credits_creator ON diamond_credits (creator_id, created_at);

-- History is append-only.
CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only (% on %)', TG_OP, TG_TABLE_NAME;
END $$;

CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER diamond_credits_append_only BEFORE UPDATE OR DELETE ON diamond_credits
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER settlement_rates_append_only BEFORE UPDATE OR DELETE ON settlement_rates
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();

CREATE TABLE withdrawals (
    withdrawal_id          text PRIMARY KEY,
    request_id             text NOT NULL UNIQUE,
    creator_id             text NOT NULL,
    diamonds               bigint NOT NULL CHECK (diamonds > 0),
    payout_currency_code   text NOT NULL CHECK (payout_currency_code ~ '^[A-Z]{3}$'),
    payout_amount_minor    bigint NOT NULL CHECK (payout_amount_minor > 0),
    -- Captured from the profile at request time: a later profile change does not redirect money already asked for.
    payout_destination     text NOT NULL CHECK (char_length(payout_destination) BETWEEN 1 AND 256),
    status                 text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'paid', 'failed', 'canceled')),
    failure_reason         text NOT NULL DEFAULT '',
    provider_reference     text,
    submitted_at           timestamptz,
    -- When the payout worker should next look at a pending withdrawal (submit it, or ask the provider about it).
    next_check_at          timestamptz NOT NULL DEFAULT now(),
    reserve_transaction_id text NOT NULL REFERENCES ledger_transactions (transaction_id),
    finish_transaction_id  text REFERENCES ledger_transactions (transaction_id),
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    -- Every way out of pending releases the reserved diamonds (paid out, or returned) in a ledger transaction.
    CHECK ((status = 'pending') = (finish_transaction_id IS NULL)),
    CHECK ((provider_reference IS NULL) = (submitted_at IS NULL)),
    CHECK ((status = 'failed') = (failure_reason <> ''))
);

-- The payout worker's scan, and the rolling 24 h cap's sum.
CREATE INDEX withdrawals_due ON withdrawals (next_check_at) WHERE status = 'pending';
CREATE INDEX withdrawals_counting_toward_cap ON withdrawals (creator_id, created_at)
    WHERE status IN ('pending', 'paid');

-- A withdrawal's amounts never change, and a finished withdrawal never changes at all.
CREATE FUNCTION withdrawal_changes_allowed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'pending' THEN
        RAISE EXCEPTION 'withdrawal % is final (%)', OLD.withdrawal_id, OLD.status;
    END IF;
    IF (NEW.withdrawal_id, NEW.request_id, NEW.creator_id, NEW.diamonds, NEW.payout_currency_code,
        NEW.payout_amount_minor, NEW.payout_destination, NEW.reserve_transaction_id)
       IS DISTINCT FROM
       (OLD.withdrawal_id, OLD.request_id, OLD.creator_id, OLD.diamonds, OLD.payout_currency_code,
        OLD.payout_amount_minor, OLD.payout_destination, OLD.reserve_transaction_id) THEN
        RAISE EXCEPTION 'withdrawal % amounts and destination are immutable', OLD.withdrawal_id;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER withdrawals_guarded BEFORE UPDATE ON withdrawals
    FOR EACH ROW EXECUTE FUNCTION withdrawal_changes_allowed();
CREATE TRIGGER withdrawals_not_deleted BEFORE DELETE ON withdrawals
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();
