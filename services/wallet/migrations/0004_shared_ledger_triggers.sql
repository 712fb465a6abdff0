-- The coin ledger's triggers now use the runtime's ledger functions (runtime/0003_ledger.sql), shared with the
-- diamond ledger: the same checks as before, one definition.
DROP TRIGGER postings_balanced ON postings;
DROP TRIGGER postings_append_only ON postings;
DROP TRIGGER transactions_append_only ON transactions;
DROP FUNCTION postings_must_balance();
DROP FUNCTION ledger_is_append_only();

CREATE TRIGGER postings_balanced AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_statement_balances('coins_delta');
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
