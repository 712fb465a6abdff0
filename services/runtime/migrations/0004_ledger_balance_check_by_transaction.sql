-- The balance check of 0003 let the planner join the statement's new postings with the whole postings table: it
-- cannot know how few transactions a transition table holds (it guesses 200), so it merged them along the full
-- postings_transaction index — every ledger INSERT read every posting ever made (measured: 10.6 ms at 27,000
-- postings, 0.46 ms this way; it grows with history). Summing each touched transaction through the index, one
-- correlated lookup per transaction, costs what the statement wrote, whatever the history. Same rule, same error.
CREATE OR REPLACE FUNCTION ledger_statement_balances() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced text;
BEGIN
    EXECUTE format(
        'SELECT t.transaction_id FROM (SELECT DISTINCT transaction_id FROM new_postings) AS t'
        ' WHERE (SELECT sum(p.%I) FROM %I.%I AS p WHERE p.transaction_id = t.transaction_id) <> 0 LIMIT 1',
        TG_ARGV[0], TG_TABLE_SCHEMA, TG_TABLE_NAME
    ) INTO unbalanced;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', unbalanced USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
