-- Projector bookkeeping. Each projection writes its read model into a schema
-- of its own per generation (sl_<name>_g<generation>); dashboards read the
-- active generation through views in the readmodel schema, whose names stay
-- the same across versions and rebuilds.
CREATE SCHEMA IF NOT EXISTS readmodel;

CREATE TABLE sightline.projections (
    name       text PRIMARY KEY,
    version    integer NOT NULL,
    generation integer NOT NULL, -- the generation readmodel.* points at
    status     text NOT NULL DEFAULT 'stopped',
    head       text NOT NULL DEFAULT '0',
    lag_ms     bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One checkpoint per projection generation, written in the same transaction
-- as the read-model rows it covers.
CREATE TABLE sightline.checkpoints (
    projection       text NOT NULL,
    generation       integer NOT NULL,
    commit_position  bigint NOT NULL DEFAULT 0,
    prepare_position bigint NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, generation)
);

-- Revisions a projection could not get from the store (truncated, deleted).
CREATE TABLE sightline.gaps (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection    text NOT NULL,
    generation    integer NOT NULL,
    stream_id     text NOT NULL,
    from_revision bigint NOT NULL,
    to_revision   bigint NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);

CREATE VIEW readmodel.projection_status AS
SELECT p.name AS projection,
       p.version,
       p.status,
       CASE WHEN c.commit_position = c.prepare_position THEN c.commit_position::text
            ELSE c.commit_position::text || '/' || c.prepare_position::text END AS position,
       p.head,
       p.lag_ms,
       greatest(p.updated_at, c.updated_at) AS updated_at
FROM sightline.projections p
LEFT JOIN sightline.checkpoints c ON c.projection = p.name AND c.generation = p.generation;
