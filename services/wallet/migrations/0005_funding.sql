-- Funding attribution (services/wallet/funding.py): which purchases paid for the coins of every movement, so that a
-- reversed purchase can be followed to the gifts its coins paid for; and partial reversals.

-- A lot: coins of one purchase in one user bucket, still unspent. lot_id orders a bucket's lots (first in, first
-- out). purchase_id NULL: coins held before attribution began (below). transaction_id: the movement that made it.
CREATE TABLE coin_lots (
    lot_id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ledger_account_id text NOT NULL REFERENCES ledger_accounts (ledger_account_id),
    purchase_id       text REFERENCES purchases (purchase_id),
    coins             bigint NOT NULL CHECK (coins >= 0),
    transaction_id    text REFERENCES transactions (transaction_id),
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- What a debit draws (a bucket's unspent lots, oldest first) and what a reversal removes (a purchase's, anywhere).
CREATE INDEX coin_lots_unspent ON coin_lots (ledger_account_id, lot_id) WHERE coins > 0;
CREATE INDEX coin_lots_of_purchase ON coin_lots (purchase_id, lot_id) WHERE coins > 0 AND purchase_id IS NOT NULL;

-- A funding row: coins a movement took out of a lot, and what for (funding.py's Use). Append-only. lot_id NULL: the
-- coins of a purchase that repaid a debt on arrival, which never reached a lot.
CREATE TABLE coin_funding (
    funding_id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id    text NOT NULL REFERENCES transactions (transaction_id),
    lot_id            bigint,
    ledger_account_id text NOT NULL,
    purchase_id       text,
    coins             bigint NOT NULL CHECK (coins > 0),
    used_for          text NOT NULL CHECK (used_for IN ('spend', 'giveaway', 'reversed', 'charged', 'debt'))
);

CREATE INDEX coin_funding_purchase ON coin_funding (purchase_id, funding_id) WHERE purchase_id IS NOT NULL;
CREATE INDEX coin_funding_transaction ON coin_funding (transaction_id);
CREATE TRIGGER coin_funding_append_only BEFORE UPDATE OR DELETE ON coin_funding
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();

-- Coins held now were bought before attribution: each bucket's balance becomes one lot of no purchase. A reversal of
-- a purchase from before charges its buyer, as it always did. Spends from before have no funding rows: reconcile
-- checks the spends made since started_at.
INSERT INTO coin_lots (ledger_account_id, purchase_id, coins)
SELECT ledger_account_id, NULL, coins FROM ledger_accounts WHERE kind = 'user' AND coins > 0;

CREATE TABLE funding_attribution (
    started_at timestamptz NOT NULL DEFAULT now(),
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO funding_attribution DEFAULT VALUES;

-- A purchase may now be reversed in parts: one row per reversal (its ledger transaction), several per purchase.
-- coins and bonus_coins: the purchase's paid and bonus coins this reversal gave back; removed_coins: taken unspent
-- from lots; clawed_back_coins: traced to gifts, whose diamonds payouts takes back; paid_coins and bonus_coins keep
-- their meaning: what the buyer's paid and bonus buckets lost.
ALTER TABLE purchase_reversals DROP CONSTRAINT purchase_reversals_pkey;
ALTER TABLE purchase_reversals ADD PRIMARY KEY (transaction_id);
CREATE INDEX purchase_reversals_of_purchase ON purchase_reversals (purchase_id, created_at);
ALTER TABLE purchase_reversals
    ADD COLUMN reversed_coins bigint NOT NULL DEFAULT 0 CHECK (reversed_coins >= 0),
    ADD COLUMN reversed_bonus_coins bigint NOT NULL DEFAULT 0 CHECK (reversed_bonus_coins >= 0),
    ADD COLUMN removed_coins bigint NOT NULL DEFAULT 0 CHECK (removed_coins >= 0),
    ADD COLUMN clawed_back_coins bigint NOT NULL DEFAULT 0 CHECK (clawed_back_coins >= 0);
-- Every reversal before was of the whole purchase, all of it charged to the buyer.
UPDATE purchase_reversals AS r SET reversed_coins = p.coins, reversed_bonus_coins = p.bonus_coins
FROM purchases AS p WHERE p.purchase_id = r.purchase_id;

-- What each reversal traced its used coins to: a funding row of the purchase (a spend, a charge, a debt repaid) and
-- the coins of it; gift_transaction_id set when the coins paid for a gift whose diamonds are clawed back. The coins
-- of one funding row are reversed at most once in all.
CREATE TABLE reversal_allocations (
    transaction_id      text NOT NULL REFERENCES purchase_reversals (transaction_id),
    funding_id          bigint NOT NULL REFERENCES coin_funding (funding_id),
    coins               bigint NOT NULL CHECK (coins > 0),
    gift_transaction_id text,
    PRIMARY KEY (transaction_id, funding_id)
);
CREATE INDEX reversal_allocations_funding ON reversal_allocations (funding_id);
CREATE TRIGGER reversal_allocations_append_only BEFORE UPDATE OR DELETE ON reversal_allocations
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
