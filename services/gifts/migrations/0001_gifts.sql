-- Gifts: the catalog, live streams, gift transactions (a saga around the wallet spend), per-stream counters and
-- the outbox of GiftSent events.

CREATE TABLE gift_catalog (
    gift_id    text PRIMARY KEY CHECK (gift_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    coin_price bigint NOT NULL CHECK (coin_price > 0),
    -- Retired gifts stay (past gift transactions refer to them) but can no longer be sent.
    active     boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO gift_catalog (gift_id, name, coin_price) VALUES
    ('rose', 'Rose', 1),
    ('finger_heart', 'Finger Heart', 5),
    ('doughnut', 'Doughnut', 30),
    ('hand_hearts', 'Hand Hearts', 100),
    ('corgi', 'Corgi', 299),
    ('money_gun', 'Money Gun', 500),
    ('disco_ball', 'Disco Ball', 1000),
    ('lion', 'Lion', 29999),
    ('universe', 'Universe', 34999);

CREATE TABLE live_streams (
    stream_id  text PRIMARY KEY,
    creator_id text NOT NULL,
    title      text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    status     text NOT NULL CHECK (status IN ('live', 'ended')),
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at   timestamptz,
    CHECK ((status = 'ended') = (ended_at IS NOT NULL))
);

-- A creator has at most one live stream, even when two starts race.
CREATE UNIQUE INDEX live_streams_one_live_per_creator ON live_streams (creator_id) WHERE status = 'live';

-- Counters kept by each completed gift, so a summary never scans the gifts of a busy stream.
CREATE TABLE stream_totals (
    stream_id   text PRIMARY KEY REFERENCES live_streams (stream_id),
    total_coins bigint NOT NULL DEFAULT 0 CHECK (total_coins >= 0),
    gift_count  bigint NOT NULL DEFAULT 0 CHECK (gift_count >= 0)
);

CREATE TABLE stream_gifters (
    stream_id text NOT NULL REFERENCES live_streams (stream_id),
    sender_id text NOT NULL,
    coins     bigint NOT NULL CHECK (coins > 0),
    PRIMARY KEY (stream_id, sender_id)
);

CREATE INDEX stream_gifters_top ON stream_gifters (stream_id, coins DESC, sender_id);

CREATE TABLE gift_transactions (
    gift_transaction_id   text PRIMARY KEY,
    request_id            text NOT NULL UNIQUE,
    sender_id             text NOT NULL,
    recipient_id          text NOT NULL,
    stream_id             text NOT NULL REFERENCES live_streams (stream_id),
    gift_id               text NOT NULL REFERENCES gift_catalog (gift_id),
    quantity              integer NOT NULL CHECK (quantity BETWEEN 1 AND 10000),
    -- The price when the gift was sent: a later price change never alters what this gift costs.
    coin_price            bigint NOT NULL CHECK (coin_price > 0),
    coins                 bigint NOT NULL CHECK (coins > 0),
    status                text NOT NULL CHECK (status IN ('pending', 'completed', 'failed')),
    -- The wallet spend that paid for the gift; one spend never pays two gifts.
    wallet_transaction_id text UNIQUE,
    sender_balance_coins  bigint CHECK (sender_balance_coins >= 0),
    failure_reason        text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    -- When the saga ended (completed or failed).
    finished_at           timestamptz,
    CHECK (coins = coin_price * quantity),
    CHECK (sender_id <> recipient_id),
    CHECK ((status = 'completed') = (wallet_transaction_id IS NOT NULL AND sender_balance_coins IS NOT NULL)),
    CHECK ((status = 'failed') = (failure_reason IS NOT NULL)),
    CHECK ((status = 'pending') = (finished_at IS NULL))
);

-- The recovery pass looks for old pending gifts only.
CREATE INDEX gift_transactions_pending ON gift_transactions (created_at) WHERE status = 'pending';

-- GiftSent events written in the same transaction as the gift's completion, published to JetStream by the relay
-- (in outbox_id order, through the primary key) and deleted once the server acknowledged them.
CREATE TABLE gift_outbox (
    outbox_id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gift_transaction_id text NOT NULL UNIQUE REFERENCES gift_transactions (gift_transaction_id),
    subject             text NOT NULL,
    payload             bytea NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);
