-- The outcome of each verify, newest last: where it compared, how many rows
-- each table had and how many drifted, with the first of them (drift, as
-- verify reports them), or why it failed (error; rows, drifted and drift
-- are then empty). Recording one keeps only a projection's latest few.
CREATE TABLE sightline.verifications (
    id          bigserial PRIMARY KEY,
    projection  text NOT NULL,
    version     integer NOT NULL,
    generation  integer NOT NULL,
    position    text, -- the token both sides were compared at; NULL when it failed before
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    rows        jsonb NOT NULL DEFAULT '{}', -- {table: rows in the read model}
    drifted     bigint NOT NULL DEFAULT 0,
    drift       jsonb NOT NULL DEFAULT '[]',
    error       text
);

CREATE INDEX verifications_projection ON sightline.verifications (projection, id DESC);
