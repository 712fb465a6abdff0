-- The diamond ledger's triggers now use the runtime's ledger functions (runtime/0003_ledger.sql), shared with the
-- coin ledger: the same checks as before, one definition.
DROP TRIGGER postings_balanced ON postings;
DROP TRIGGER postings_append_only ON postings;
DROP TRIGGER ledger_transactions_append_only ON ledger_transactions;
DROP TRIGGER settlement_rates_append_only ON settlement_rates;
DROP TRIGGER withdrawals_not_deleted ON withdrawals;
DROP FUNCTION postings_must_balance();
DROP FUNCTION ledger_is_append_only();

CREATE TRIGGER postings_balanced AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_statement_balances('diamonds_delta');
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER settlement_rates_append_only BEFORE UPDATE OR DELETE ON settlement_rates
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER withdrawals_not_deleted BEFORE DELETE ON withdrawals
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
