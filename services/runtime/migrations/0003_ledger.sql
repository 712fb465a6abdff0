-- Double entry, guarded by the database with one definition for both ledgers (services/runtime/ledger.py says the
-- rules). A service attaches them to its own tables, naming its postings' amount column:
--   CREATE TRIGGER postings_balanced AFTER INSERT ON postings REFERENCING NEW TABLE AS new_postings
--       FOR EACH STATEMENT EXECUTE FUNCTION ledger_statement_balances('coins_delta');
--   CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
--       FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
-- (Created in every service's database; gifts keeps no ledger and attaches nothing.)

-- Each INSERT statement must leave every transaction it touched summing to zero. Checked once per statement, not
-- per posting: a per-row check re-sums a transaction for each of its postings (a 500-creator settlement 500 times).
-- So a store writes all postings of a transaction in one statement.
CREATE FUNCTION ledger_statement_balances() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced text;
BEGIN
    EXECUTE format(
        'SELECT p.transaction_id FROM %I.%I AS p'
        ' WHERE p.transaction_id IN (SELECT DISTINCT transaction_id FROM new_postings)'
        ' GROUP BY p.transaction_id HAVING sum(p.%I) <> 0 LIMIT 1',
        TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_ARGV[0]
    ) INTO unbalanced;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', unbalanced USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

-- The ledger is append-only: a correction is a new transaction, never an edit.
CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only (% on %)', TG_OP, TG_TABLE_NAME;
END $$;
