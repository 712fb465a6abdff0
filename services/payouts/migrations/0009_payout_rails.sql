-- Real payout rails (issue 20: Stripe Connect, PayPal Payouts) beside the sandbox.
--
-- 'submitted': handed to a provider that cannot call a payout back (services/payouts/domain.py SUBMIT_FIRST_RAILS);
-- recorded and committed before the provider is called, so a crash never loses what was handed over. It may have no
-- provider_reference yet (the answer was lost): the payout worker then asks the provider by the withdrawal id.
-- 'returned': paid, then given back by the provider (a reversed transfer, a returned PayPal item): the diamonds go
-- back to available in a second ledger transaction, return_transaction_id, recorded once.
-- The looser CHECKs are NOT VALID (no scan under the table's exclusive lock; every row met the stricter ones): 0010
-- validates them.
ALTER TABLE withdrawals DROP CONSTRAINT withdrawals_status_check;
ALTER TABLE withdrawals ADD CONSTRAINT withdrawals_status_check
    CHECK (status IN ('pending', 'submitted', 'paid', 'failed', 'canceled', 'returned')) NOT VALID;
-- Every way out of pending or submitted releases the reserved diamonds (paid out, or given back).
ALTER TABLE withdrawals DROP CONSTRAINT withdrawals_check;
ALTER TABLE withdrawals ADD CONSTRAINT withdrawals_finished_check
    CHECK ((status IN ('pending', 'submitted')) = (finish_transaction_id IS NULL)) NOT VALID;
-- A reference only once submitted; a submitted withdrawal may not have one yet.
ALTER TABLE withdrawals DROP CONSTRAINT withdrawals_check1;
ALTER TABLE withdrawals ADD CONSTRAINT withdrawals_submitted_check
    CHECK (provider_reference IS NULL OR submitted_at IS NOT NULL) NOT VALID;
ALTER TABLE withdrawals DROP CONSTRAINT withdrawals_check2;
ALTER TABLE withdrawals ADD CONSTRAINT withdrawals_failure_reason_check
    CHECK ((status IN ('failed', 'returned')) = (failure_reason <> '')) NOT VALID;

-- Which provider pays the withdrawal, fixed when it is requested: each payout worker takes only its own provider's
-- withdrawals, so replicas configured with different providers (a switch of provider, the tests) never hand a
-- withdrawal to a provider it was not meant for. Constant default: no rewrite, and every withdrawal so far was the
-- sandbox's.
ALTER TABLE withdrawals
    ADD COLUMN payout_provider text NOT NULL DEFAULT 'sandbox',
    ADD COLUMN return_transaction_id text REFERENCES ledger_transactions (transaction_id),
    ADD CONSTRAINT withdrawals_returned_check CHECK ((status = 'returned') = (return_transaction_id IS NOT NULL)) NOT VALID;

-- A withdrawal's amounts, destination and provider never change; a finished one changes only from paid to returned
-- (and then never again).
CREATE OR REPLACE FUNCTION withdrawal_changes_allowed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status NOT IN ('pending', 'submitted') AND NOT (OLD.status = 'paid' AND NEW.status = 'returned') THEN
        RAISE EXCEPTION 'withdrawal % is final (%)', OLD.withdrawal_id, OLD.status;
    END IF;
    IF OLD.status = 'submitted' AND NEW.status IN ('pending', 'canceled') THEN
        RAISE EXCEPTION 'withdrawal % was handed to its provider', OLD.withdrawal_id;
    END IF;
    IF (NEW.withdrawal_id, NEW.request_id, NEW.creator_id, NEW.diamonds, NEW.payout_currency_code,
        NEW.payout_amount_minor, NEW.payout_destination, NEW.reserve_transaction_id, NEW.payout_provider)
       IS DISTINCT FROM
       (OLD.withdrawal_id, OLD.request_id, OLD.creator_id, OLD.diamonds, OLD.payout_currency_code,
        OLD.payout_amount_minor, OLD.payout_destination, OLD.reserve_transaction_id, OLD.payout_provider) THEN
        RAISE EXCEPTION 'withdrawal % amounts and destination are immutable', OLD.withdrawal_id;
    END IF;
    RETURN NEW;
END $$;

-- The payout worker's scan (each provider its own) and the rolling 24 h cap's sum, now with submitted ones.
DROP INDEX withdrawals_due;
CREATE INDEX withdrawals_due ON withdrawals (payout_provider, next_check_at) WHERE status IN ('pending', 'submitted');
DROP INDEX withdrawals_counting_toward_cap;
CREATE INDEX withdrawals_counting_toward_cap ON withdrawals (creator_id, created_at)
    WHERE status IN ('pending', 'submitted', 'paid');

-- New ledger movement: 'payout_returned' (system:paid_out → creator available), a paid payout given back.
ALTER TABLE ledger_transactions DROP CONSTRAINT ledger_transactions_kind_check;
ALTER TABLE ledger_transactions ADD CONSTRAINT ledger_transactions_kind_check CHECK (
    kind IN ('settlement', 'maturity', 'withdrawal_reserve', 'withdrawal_paid', 'withdrawal_returned',
             'withdrawal_canceled', 'clawback', 'debt_repayment', 'payout_returned')
) NOT VALID;

-- Every webhook a payout provider sends (Stripe's evt_…, PayPal's WH-…) is recorded by its own id in the transaction
-- that applies it, so a provider's retry, or a replay, takes effect once.
CREATE TABLE payout_notifications (
    payout_provider text NOT NULL,
    notification_id text NOT NULL,
    kind            text NOT NULL,
    withdrawal_id   text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (payout_provider, notification_id)
);
