-- Gifting beyond one live stream: gifts to posted videos, timed matches between live streams, and stream goals.

-- Videos registered by the content backend. The creator receives the video's gifts and never changes (a video that
-- changed hands would send later gifts' money elsewhere without anyone deciding it).
CREATE TABLE videos (
    video_id      text PRIMARY KEY CHECK (video_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    creator_id    text NOT NULL,
    gifts_enabled boolean NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Counters kept by each completed video gift, like stream_totals and stream_gifters.
CREATE TABLE video_totals (
    video_id    text PRIMARY KEY REFERENCES videos (video_id),
    total_coins bigint NOT NULL DEFAULT 0 CHECK (total_coins >= 0),
    gift_count  bigint NOT NULL DEFAULT 0 CHECK (gift_count >= 0)
);

CREATE TABLE video_gifters (
    video_id  text NOT NULL REFERENCES videos (video_id),
    sender_id text NOT NULL,
    coins     bigint NOT NULL CHECK (coins > 0),
    PRIMARY KEY (video_id, sender_id)
);

CREATE INDEX video_gifters_top ON video_gifters (video_id, coins DESC, sender_id);

-- A gift goes to exactly one live stream or one video. NOT VALID: no scan of every gift while gifting waits on this
-- table's lock; new rows are checked at once, and 0005 validates the old ones under a lock that lets gifts through.
ALTER TABLE gift_transactions
    ALTER COLUMN stream_id DROP NOT NULL,
    ADD COLUMN video_id text,
    ADD CONSTRAINT gift_transactions_video_id_fkey FOREIGN KEY (video_id) REFERENCES videos (video_id) NOT VALID,
    ADD CONSTRAINT gift_transactions_one_target CHECK (num_nonnulls(stream_id, video_id) = 1) NOT VALID;

-- Combos of video gifts, kept like gift_combos keeps those of stream gifts. A table of their own rather than a new key
-- for gift_combos: during a rolling upgrade the previous release still reads and writes gift_combos as it was
-- (deploy/README.md: expand, then contract).
CREATE TABLE video_combos (
    video_id     text NOT NULL REFERENCES videos (video_id),
    sender_id    text NOT NULL,
    gift_id      text NOT NULL REFERENCES gift_catalog (gift_id),
    last_sent_at timestamptz,
    combo_count  integer NOT NULL DEFAULT 0 CHECK (combo_count >= 0),
    PRIMARY KEY (video_id, sender_id, gift_id)
);

-- Matches: 2-4 live streams compete for the coins of the gifts completed to them from starts_at to ends_at. A side's
-- score is kept by the completion transaction of its gifts (never recounted); the finisher stamps the winners.
CREATE TABLE matches (
    match_id          text PRIMARY KEY,
    status            text NOT NULL CHECK (status IN ('active', 'finished')),
    starts_at         timestamptz NOT NULL,
    ends_at           timestamptz NOT NULL,
    finished_at       timestamptz,
    winner_stream_ids text[],
    CHECK (ends_at > starts_at),
    CHECK ((status = 'finished') = (finished_at IS NOT NULL)),
    CHECK ((status = 'finished') = (winner_stream_ids IS NOT NULL)),
    CHECK (finished_at IS NULL OR finished_at >= ends_at)
);

-- The finisher looks for active matches past their end only.
CREATE INDEX matches_due ON matches (ends_at) WHERE status = 'active';

CREATE TABLE match_sides (
    match_id    text NOT NULL REFERENCES matches (match_id),
    stream_id   text NOT NULL REFERENCES live_streams (stream_id),
    creator_id  text NOT NULL,
    -- The side's place in StartMatchRequest.stream_ids, which responses and events keep.
    position    smallint NOT NULL CHECK (position BETWEEN 0 AND 3),
    score_coins bigint NOT NULL DEFAULT 0 CHECK (score_coins >= 0),
    PRIMARY KEY (match_id, stream_id),
    UNIQUE (match_id, position),
    UNIQUE (match_id, creator_id)
);

CREATE INDEX match_sides_by_stream ON match_sides (stream_id);

-- Coins each sender gave each side, for GetMatch's top supporters.
CREATE TABLE match_supporters (
    match_id  text NOT NULL,
    stream_id text NOT NULL,
    sender_id text NOT NULL,
    coins     bigint NOT NULL CHECK (coins > 0),
    PRIMARY KEY (match_id, stream_id, sender_id),
    FOREIGN KEY (match_id, stream_id) REFERENCES match_sides (match_id, stream_id)
);

CREATE INDEX match_supporters_top ON match_supporters (match_id, stream_id, coins DESC, sender_id);

-- Stream goals: a coin target; progress is kept by the completion transaction of the stream's gifts.
CREATE TABLE stream_goals (
    goal_id        text PRIMARY KEY,
    stream_id      text NOT NULL REFERENCES live_streams (stream_id),
    creator_id     text NOT NULL,
    target_coins   bigint NOT NULL CHECK (target_coins BETWEEN 1 AND 1000000000),
    description    text NOT NULL CHECK (length(description) <= 200),
    progress_coins bigint NOT NULL DEFAULT 0 CHECK (progress_coins >= 0),
    created_at     timestamptz NOT NULL,
    -- Stamped once, by the completion that first brought progress to the target.
    reached_at     timestamptz,
    -- When a newer goal replaced this one; NULL for the open goal.
    closed_at      timestamptz,
    CHECK ((reached_at IS NULL) = (progress_coins < target_coins))
);

-- A stream has at most one open goal.
CREATE UNIQUE INDEX stream_goals_one_open ON stream_goals (stream_id) WHERE closed_at IS NULL;

-- The last match the stream joined (it is in that match while the match is active) and its open goal, read (and
-- locked FOR KEY SHARE) with the stream by each completing batch, so batches to plain streams pay nothing for
-- matches and goals. Written only under the stream's FOR UPDATE lock (StartMatch, SetStreamGoal): finishing a match
-- changes the match alone.
ALTER TABLE live_streams
    ADD COLUMN match_id text REFERENCES matches (match_id),
    ADD COLUMN goal_id  text REFERENCES stream_goals (goal_id);
