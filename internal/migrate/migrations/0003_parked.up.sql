-- Dead letters. An event whose handler kept failing is parked here with its
-- error ('parked'), and so is every later event of its stream ('held')
-- until an operator retries or skips it: only that stream waits. The rows
-- keep a copy of the event, so they can be read and replayed even when the
-- store no longer has it.
CREATE TABLE sightline.parked (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection       text NOT NULL,
    generation       integer NOT NULL,
    stream_id        text NOT NULL,
    revision         bigint NOT NULL,
    event_id         text NOT NULL,
    type             text NOT NULL,
    data             bytea NOT NULL,
    metadata         bytea,
    commit_position  bigint NOT NULL,
    prepare_position bigint NOT NULL,
    created_at       timestamptz NOT NULL, -- when the event was written
    state            text NOT NULL CHECK (state IN ('parked', 'held', 'applied', 'skipped')),
    error            text,
    attempts         integer NOT NULL DEFAULT 0,
    parked_at        timestamptz NOT NULL DEFAULT now(),
    resolved_at      timestamptz,
    UNIQUE (projection, generation, stream_id, revision)
);

-- The projector asks, for every batch, which of its streams are held.
CREATE INDEX parked_unresolved ON sightline.parked (projection, generation, stream_id)
    WHERE state IN ('parked', 'held');

CREATE OR REPLACE VIEW readmodel.projection_status AS
SELECT p.name AS projection,
       p.version,
       p.status,
       CASE WHEN c.commit_position = c.prepare_position THEN c.commit_position::text
            ELSE c.commit_position::text || '/' || c.prepare_position::text END AS position,
       p.head,
       p.lag_ms,
       greatest(p.updated_at, c.updated_at) AS updated_at,
       (SELECT count(*) FROM sightline.parked k
         WHERE k.projection = p.name AND k.generation = p.generation
           AND k.state IN ('parked', 'held')) AS parked
FROM sightline.projections p
LEFT JOIN sightline.checkpoints c ON c.projection = p.name AND c.generation = p.generation;
