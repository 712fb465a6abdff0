-- The constraints 0004 added NOT VALID, checked against the gifts from before it. VALIDATE takes a SHARE UPDATE
-- EXCLUSIVE lock: gifts are sent and completed meanwhile (a migration of its own, so its own transaction).
ALTER TABLE gift_transactions VALIDATE CONSTRAINT gift_transactions_video_id_fkey;
ALTER TABLE gift_transactions VALIDATE CONSTRAINT gift_transactions_one_target;
