-- Economy depth: combos, leaderboard counters, how each gift was paid (paid vs bonus coins), and an outbox that
-- carries StreamEnded as well as GiftSent (so a stream's end is published after its gifts, in outbox order).

-- How the wallet paid for the gift (0 and 0 while the wallet does not report it yet), and the gift's place in its
-- combo. Both are set when the gift completes; pending and failed gifts keep the defaults.
ALTER TABLE gift_transactions
    ADD COLUMN paid_coins  bigint  NOT NULL DEFAULT 0 CHECK (paid_coins >= 0),
    ADD COLUMN bonus_coins bigint  NOT NULL DEFAULT 0 CHECK (bonus_coins >= 0),
    ADD COLUMN combo_count integer NOT NULL DEFAULT 0 CHECK (combo_count >= 0),
    ADD CONSTRAINT gift_transactions_split_within_coins CHECK (paid_coins + bonus_coins IN (0, coins));

-- The gifts before this migration completed without combos: each counts as a combo of one.
UPDATE gift_transactions SET combo_count = 1 WHERE status = 'completed';
ALTER TABLE gift_transactions
    ADD CONSTRAINT gift_transactions_combo_when_completed CHECK ((status = 'completed') = (combo_count > 0));

-- The last completed gift of each (stream, sender, gift): its row lock serializes the completions that may continue
-- one combo, so two concurrent gifts never get the same combo_count.
CREATE TABLE gift_combos (
    stream_id    text NOT NULL REFERENCES live_streams (stream_id),
    sender_id    text NOT NULL,
    gift_id      text NOT NULL REFERENCES gift_catalog (gift_id),
    last_sent_at timestamptz,
    combo_count  integer NOT NULL DEFAULT 0 CHECK (combo_count >= 0),
    PRIMARY KEY (stream_id, sender_id, gift_id)
);

-- Coins each sender gave a creator per period, kept by each completed gift so a leaderboard never scans gift history.
-- period_start: the UTC day, the Monday of the ISO week, or 1970-01-01 for all time.
CREATE TABLE gifter_totals (
    creator_id   text NOT NULL,
    period_kind  text NOT NULL CHECK (period_kind IN ('day', 'week', 'all_time')),
    period_start date NOT NULL,
    sender_id    text NOT NULL,
    coins        bigint NOT NULL CHECK (coins > 0),
    PRIMARY KEY (creator_id, period_kind, period_start, sender_id)
);

CREATE INDEX gifter_totals_top ON gifter_totals (creator_id, period_kind, period_start, coins DESC, sender_id);

INSERT INTO gifter_totals (creator_id, period_kind, period_start, sender_id, coins)
SELECT recipient_id, period_kind, period_start, sender_id, sum(coins)
FROM gift_transactions
CROSS JOIN LATERAL (VALUES
    ('day', date_trunc('day', finished_at AT TIME ZONE 'UTC')::date),
    ('week', date_trunc('week', finished_at AT TIME ZONE 'UTC')::date),
    ('all_time', DATE '1970-01-01')
) AS periods (period_kind, period_start)
WHERE status = 'completed'
GROUP BY recipient_id, period_kind, period_start, sender_id;

-- The outbox now holds any event: msg_id is its Nats-Msg-Id (gift_transaction_id for GiftSent,
-- "stream_ended:<stream_id>" for StreamEnded); gift_transaction_id stays set for gift events.
ALTER TABLE gift_outbox ADD COLUMN msg_id text;
UPDATE gift_outbox SET msg_id = gift_transaction_id;
ALTER TABLE gift_outbox
    ALTER COLUMN msg_id SET NOT NULL,
    ALTER COLUMN gift_transaction_id DROP NOT NULL,
    ADD CONSTRAINT gift_outbox_msg_id_unique UNIQUE (msg_id);
