DROP VIEW readmodel.projection_status;
CREATE VIEW readmodel.projection_status AS
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
       p.reason
FROM sightline.projections p
LEFT JOIN sightline.checkpoints c ON c.projection = p.name AND c.generation = p.generation;

DROP FUNCTION sightline.check_owner(text, integer, text, bigint);
DROP FUNCTION sightline.lock_checkpoint(text, integer, integer, bigint, bigint);

-- Only segment 0 of each generation can stay.
DELETE FROM sightline.checkpoints WHERE segment <> 0;
ALTER TABLE sightline.checkpoints DROP CONSTRAINT checkpoints_pkey;
ALTER TABLE sightline.checkpoints DROP COLUMN segment;
ALTER TABLE sightline.checkpoints ADD PRIMARY KEY (projection, generation);
DELETE FROM sightline.owners WHERE segment <> 0;

ALTER TABLE sightline.generations DROP COLUMN segments;
