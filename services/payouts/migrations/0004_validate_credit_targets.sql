-- The CHECK 0003 added NOT VALID, checked against the credits from before it. VALIDATE takes a SHARE UPDATE EXCLUSIVE
-- lock: settlement and withdrawals go on meanwhile (a migration of its own, so its own transaction).
ALTER TABLE diamond_credits VALIDATE CONSTRAINT diamond_credits_one_target;
