-- The embedded event store.
--
-- An append inserts its events into event_log and marks them unsequenced,
-- in one statement; the (stream_id, revision) key is its optimistic
-- concurrency guard. After commit, the sequencer (sightline.sequence_events)
-- gives committed events gapless positions in batches, one sequencer at a
-- time. Positions are therefore given in commit order and never leave a hole
-- that a later commit could fill: a reader that has seen position N has seen
-- every position below it, and a transaction left open anywhere in the
-- database holds nothing back, because its rows simply have no position yet.
CREATE SCHEMA IF NOT EXISTS sightline;

CREATE TABLE sightline.event_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- insertion order, not an order readers rely on
    stream_id  text NOT NULL,
    revision   bigint NOT NULL,
    event_id   uuid NOT NULL,
    type       text NOT NULL,
    data       jsonb NOT NULL,
    metadata   jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT event_log_event_id_key UNIQUE (event_id),
    CONSTRAINT event_log_stream_revision_key UNIQUE (stream_id, revision),
    CONSTRAINT event_log_revision_check CHECK (revision >= 0)
);

-- Committed events waiting for a position.
CREATE TABLE sightline.unsequenced (
    id bigint PRIMARY KEY
);

-- The global order: position → event_log row.
CREATE TABLE sightline.positions (
    position  bigint PRIMARY KEY,
    event_row bigint NOT NULL,
    CONSTRAINT positions_event_row_key UNIQUE (event_row)
);

CREATE TABLE sightline.sequencer (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    head      bigint NOT NULL DEFAULT 0, -- the newest position given out
    head_at   timestamptz                -- created_at of the event at head
);
INSERT INTO sightline.sequencer DEFAULT VALUES;

-- Events as readers see them; position is NULL until sequenced.
CREATE VIEW sightline.events AS
SELECT p.position, e.stream_id, e.revision, e.event_id, e.type, e.data, e.metadata, e.created_at, e.id AS row_id
FROM sightline.event_log e
LEFT JOIN sightline.positions p ON p.event_row = e.id;

-- sequence_events gives up to max_events committed, unsequenced events the
-- next positions, in insertion order, and notifies 'sightline_events' with
-- the new head. The advisory lock makes sequencers take turns, so each one
-- sees every event committed before it started and positions never go back.
CREATE FUNCTION sightline.sequence_events(max_events integer)
RETURNS TABLE (event_row bigint, "position" bigint)
LANGUAGE plpgsql AS $$
DECLARE
    prev_head bigint;
    rows_     bigint[];
    positions bigint[];
BEGIN
    PERFORM pg_advisory_xact_lock(7406745143525210945);
    SELECT s.head INTO prev_head FROM sightline.sequencer s;

    WITH taken AS (
        DELETE FROM sightline.unsequenced u
        WHERE u.id IN (SELECT x.id FROM sightline.unsequenced x ORDER BY x.id LIMIT max_events)
        RETURNING u.id
    ), placed AS (
        INSERT INTO sightline.positions (position, event_row)
        SELECT prev_head + row_number() OVER (ORDER BY t.id), t.id FROM taken t
        RETURNING sightline.positions.position AS pos, sightline.positions.event_row AS er
    )
    SELECT array_agg(er ORDER BY pos), array_agg(pos ORDER BY pos) INTO rows_, positions FROM placed;

    IF rows_ IS NULL THEN
        RETURN;
    END IF;
    UPDATE sightline.sequencer
    SET head = prev_head + cardinality(rows_),
        head_at = (SELECT e.created_at FROM sightline.event_log e WHERE e.id = rows_[cardinality(rows_)]);
    PERFORM pg_notify('sightline_events', (prev_head + cardinality(rows_))::text);
    RETURN QUERY SELECT * FROM unnest(rows_, positions);
END;
$$;
