-- Why a projection is failed, degraded or stalled, beside its status.
ALTER TABLE sightline.projections ADD COLUMN reason text NOT NULL DEFAULT '';

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
       p.reason
FROM sightline.projections p
LEFT JOIN sightline.checkpoints c ON c.projection = p.name AND c.generation = p.generation;
