-- Card testing: PurchaseCoins is refused past a number of declined payments in 24 h, per account charged and per
-- caller asking (services/wallet/domain.py). Expand only: the release before runs on this schema during a rollout.

-- Who asked for each purchase: the authenticated subject (the account's owner, or a backend acting for many
-- accounts). Nullable without a default, so adding it rewrites nothing; a wallet of the release before leaves it
-- NULL, and its declines then count for their account but for no caller. IF NOT EXISTS, as the indexes below.
ALTER TABLE purchases ADD COLUMN IF NOT EXISTS caller text;

-- The two counts read the newest declines of an account or a caller (a declined purchase is final: its updated_at is
-- when it was declined), and the account's also its pending purchases. Partial: an index entry per pending or
-- declined purchase, none for the completed ones that make most of the table. IF NOT EXISTS: on a large table an
-- operator adds the column and builds them beforehand with CREATE INDEX CONCURRENTLY under these names
-- (deploy/README.md), and this migration, which cannot build one concurrently in its transaction, finds them there.
CREATE INDEX IF NOT EXISTS purchases_account_attempts ON purchases (account_id, status, updated_at)
    WHERE status IN ('pending', 'declined');
CREATE INDEX IF NOT EXISTS purchases_caller_declines ON purchases (caller, updated_at) WHERE status = 'declined';
