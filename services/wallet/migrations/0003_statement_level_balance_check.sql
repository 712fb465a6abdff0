-- Double entry checked once per statement, not once per posting: the per-row deferred check re-summed (and
-- re-planned) a transaction for each of its postings, about a quarter of the wallet's database time in a batch of
-- spends. The store writes every posting of a ledger transaction in one statement (record_movement,
-- record_spends), so each INSERT must leave every transaction it touched summing to zero — as in payouts.
DROP TRIGGER postings_balanced ON postings;

CREATE OR REPLACE FUNCTION postings_must_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced text;
BEGIN
    SELECT p.transaction_id INTO unbalanced
    FROM postings AS p
    WHERE p.transaction_id IN (SELECT DISTINCT transaction_id FROM new_postings)
    GROUP BY p.transaction_id
    HAVING sum(p.coins_delta) <> 0
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', unbalanced USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER postings_balanced AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION postings_must_balance();
