-- The CHECKs 0006 added NOT VALID, checked against the rows from before it. VALIDATE takes a SHARE UPDATE EXCLUSIVE
-- lock: settlement, maturity and withdrawals go on meanwhile (a migration of its own, so its own transaction).
ALTER TABLE ledger_transactions VALIDATE CONSTRAINT ledger_transactions_kind_check;
ALTER TABLE postings VALIDATE CONSTRAINT postings_ledger_account_id_check;
ALTER TABLE creator_balances VALIDATE CONSTRAINT creator_balances_debt_diamonds_check;
ALTER TABLE creator_balances VALIDATE CONSTRAINT creator_balances_clawed_back_diamonds_check;
ALTER TABLE diamond_credits VALIDATE CONSTRAINT diamond_credits_held_clawed_back_check;
