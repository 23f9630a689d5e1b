-- A projection may be split into segments: its streams are divided by a
-- stable hash of the stream id, and each segment is applied, checkpointed
-- and owned on its own. A generation keeps the number it was built with;
-- each of its segments has a checkpoint row.
ALTER TABLE sightline.generations ADD COLUMN segments integer NOT NULL DEFAULT 1
    CHECK (segments BETWEEN 1 AND 64);

ALTER TABLE sightline.checkpoints ADD COLUMN segment integer NOT NULL DEFAULT 0;
ALTER TABLE sightline.checkpoints DROP CONSTRAINT checkpoints_pkey;
ALTER TABLE sightline.checkpoints ADD PRIMARY KEY (projection, generation, segment);

-- lock_checkpoint and check_owner of one segment; the versions without a
-- segment stay, for segment 0, as they were.
CREATE FUNCTION sightline.lock_checkpoint(p_projection text, p_generation integer, p_segment integer, p_commit bigint, p_prepare bigint)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    c sightline.checkpoints%ROWTYPE;
BEGIN
    SELECT * INTO c FROM sightline.checkpoints
    WHERE projection = p_projection AND generation = p_generation AND segment = p_segment
    FOR UPDATE;
    IF NOT FOUND OR c.superseded THEN
        RAISE EXCEPTION 'generation % of % is gone or replaced', p_generation, p_projection USING ERRCODE = 'SLGEN';
    END IF;
    IF c.commit_position <> p_commit OR c.prepare_position <> p_prepare THEN
        RAISE EXCEPTION 'checkpoint of % generation % segment % moved', p_projection, p_generation, p_segment
            USING ERRCODE = 'SLCKM', DETAIL = c.commit_position || ' ' || c.prepare_position;
    END IF;
END;
$$;

CREATE FUNCTION sightline.check_owner(p_projection text, p_segment integer, p_owner text, p_epoch bigint)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM sightline.owners
    WHERE projection = p_projection AND segment = p_segment AND owner = p_owner AND epoch = p_epoch AND NOT released
    FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'segment % of projection % is no longer held by process % at epoch %', p_segment, p_projection, p_owner, p_epoch
            USING ERRCODE = 'SLOWN';
    END IF;
END;
$$;

-- A segmented projection's position is its lowest segment's.
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
           AND k.state IN ('parked', 'held')) AS parked,
       p.reason,
       coalesce(c.segments, 1) AS segments
FROM sightline.projections p
LEFT JOIN LATERAL (
    SELECT c.commit_position, c.prepare_position,
           max(c.updated_at) OVER () AS updated_at, count(*) OVER () AS segments
    FROM sightline.checkpoints c
    WHERE c.projection = p.name AND c.generation = p.generation
    ORDER BY c.commit_position, c.prepare_position
    LIMIT 1) c ON true;
