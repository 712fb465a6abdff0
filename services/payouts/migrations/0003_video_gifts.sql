-- Video gifts: a gift goes to a live stream or to a posted video, so a credit names exactly one of them. Credits from
-- before all name a stream, so the CHECK holds for them; the previous release, still running during a rolling
-- deploy, only ever inserts stream credits. NOT VALID: no scan of the whole ledger while settlement waits on this
-- table's lock; new rows are checked at once, and 0004 validates the old ones under a lock that lets settlement on.
ALTER TABLE diamond_credits
    ADD COLUMN video_id text,
    ALTER COLUMN stream_id DROP NOT NULL,
    ADD CONSTRAINT diamond_credits_one_target CHECK (num_nonnulls(stream_id, video_id) = 1) NOT VALID;

-- The creator statement by video, like diamond_credits_by_stream. Partial: the by-video query reads video credits
-- only, so stream credits need no entries in it. (Building it holds settlement's inserts for the length of a scan of
-- diamond_credits: CONCURRENTLY cannot run in a migration's transaction.)
CREATE INDEX diamond_credits_by_video ON diamond_credits (creator_id, video_id) WHERE video_id IS NOT NULL;

-- A credit's video is as immutable as the rest of it: the guard of 0002, with video_id among the columns compared.
-- Replaced in place, so the trigger diamond_credits_guarded keeps calling it.
CREATE OR REPLACE FUNCTION diamond_credit_changes_allowed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'the ledger is append-only (DELETE on diamond_credits)';
    END IF;
    IF OLD.matured_at IS NOT NULL OR NEW.matured_at IS NULL OR NEW.maturity_transaction_id IS NULL
       OR (NEW.gift_transaction_id, NEW.creator_id, NEW.stream_id, NEW.video_id, NEW.coins, NEW.diamonds,
           NEW.rate_version, NEW.transaction_id, NEW.created_at, NEW.paid_coins, NEW.bonus_coins, NEW.available_at)
          IS DISTINCT FROM
          (OLD.gift_transaction_id, OLD.creator_id, OLD.stream_id, OLD.video_id, OLD.coins, OLD.diamonds,
           OLD.rate_version, OLD.transaction_id, OLD.created_at, OLD.paid_coins, OLD.bonus_coins, OLD.available_at) THEN
        RAISE EXCEPTION 'the ledger is append-only (UPDATE on diamond_credits: only a pending credit may mature, once)';
    END IF;
    RETURN NEW;
END $$;
