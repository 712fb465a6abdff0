-- Wallet: accounts, a double-entry coin ledger, purchases.

CREATE TABLE accounts (
    account_id     text PRIMARY KEY,
    adult_verified boolean NOT NULL,
    country_code   text NOT NULL,
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'frozen')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- A user's ledger account is its account_id; the platform's are 'system:*'. Only user balances are kept as a
-- column: system balances are the sum of their postings, so no spend ever waits on a hot platform row.
CREATE TABLE ledger_accounts (
    ledger_account_id text PRIMARY KEY,
    kind              text NOT NULL CHECK (kind IN ('user', 'system')),
    coins             bigint NOT NULL DEFAULT 0,
    CONSTRAINT user_coins_not_negative CHECK (kind <> 'user' OR coins >= 0)
);

INSERT INTO ledger_accounts (ledger_account_id, kind) VALUES
    ('system:sales', 'system'), ('system:promotions', 'system'), ('system:spent', 'system');

CREATE TABLE transactions (
    transaction_id text PRIMARY KEY,
    kind           text NOT NULL CHECK (kind IN ('purchase', 'spend')),
    request_id     text NOT NULL UNIQUE,
    account_id     text NOT NULL REFERENCES accounts (account_id),
    reference      text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE postings (
    posting_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id    text NOT NULL REFERENCES transactions (transaction_id),
    ledger_account_id text NOT NULL REFERENCES ledger_accounts (ledger_account_id),
    coins_delta       bigint NOT NULL CHECK (coins_delta <> 0),
    balance_after     bigint,  -- user accounts only
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX postings_history ON postings (ledger_account_id, posting_id DESC);
CREATE INDEX postings_transaction ON postings (transaction_id);

-- The database guards double entry too: at commit, every transaction touched must sum to zero.
CREATE FUNCTION postings_must_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT sum(coins_delta) FROM postings WHERE transaction_id = NEW.transaction_id) <> 0 THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', NEW.transaction_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER postings_balanced
    AFTER INSERT ON postings DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION postings_must_balance();

-- The ledger is append-only.
CREATE FUNCTION ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only (% on %)', TG_OP, TG_TABLE_NAME;
END $$;

CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();

CREATE TABLE purchases (
    purchase_id        text PRIMARY KEY,
    request_id         text NOT NULL UNIQUE,
    account_id         text NOT NULL REFERENCES accounts (account_id),
    package_id         text NOT NULL,
    coins              bigint NOT NULL CHECK (coins > 0),
    bonus_coins        bigint NOT NULL CHECK (bonus_coins >= 0),
    price_minor        bigint NOT NULL CHECK (price_minor >= 0),
    currency_code      text NOT NULL,
    -- Kept so recovery can finish the charge; providers dedup by purchase_id, so charging again is safe.
    payment_token      text NOT NULL,
    status             text NOT NULL CHECK (status IN ('pending', 'completed', 'declined')),
    provider_reference text,
    transaction_id     text REFERENCES transactions (transaction_id),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'completed') = (transaction_id IS NOT NULL))
);

CREATE INDEX purchases_pending ON purchases (created_at) WHERE status = 'pending';
