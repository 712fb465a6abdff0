-- The CHECKs 0009 added NOT VALID, checked against the rows from before it. VALIDATE takes a SHARE UPDATE EXCLUSIVE
-- lock: withdrawals go on meanwhile (a migration of its own, so its own transaction).
ALTER TABLE withdrawals VALIDATE CONSTRAINT withdrawals_status_check;
ALTER TABLE withdrawals VALIDATE CONSTRAINT withdrawals_finished_check;
ALTER TABLE withdrawals VALIDATE CONSTRAINT withdrawals_submitted_check;
ALTER TABLE withdrawals VALIDATE CONSTRAINT withdrawals_failure_reason_check;
ALTER TABLE withdrawals VALIDATE CONSTRAINT withdrawals_returned_check;
ALTER TABLE ledger_transactions VALIDATE CONSTRAINT ledger_transactions_kind_check;
