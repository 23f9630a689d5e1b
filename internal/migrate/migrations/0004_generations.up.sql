-- Generations of a projection: the one readmodel.* shows ('active'), at most
-- one being built beside it ('building'), those replaced and waiting out
-- their grace period before their tables are dropped ('retired'), and the
-- scratch copies that verify replays into ('scratch').
CREATE TABLE sightline.generations (
    projection   text NOT NULL,
    generation   integer NOT NULL,
    version      integer NOT NULL,
    state        text NOT NULL CHECK (state IN ('building', 'active', 'retired', 'dropped', 'cancelled', 'scratch')),
    reason       text NOT NULL DEFAULT 'first', -- first, version, requested, verify
    -- A building generation's deferred indexes exist (they are created
    -- once the bulk load has caught up, before the swap).
    indexed      boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    retired_at   timestamptz,
    drop_after   timestamptz,
    PRIMARY KEY (projection, generation)
);

-- One rebuild at a time per projection.
CREATE UNIQUE INDEX generations_one_build ON sightline.generations (projection) WHERE state = 'building';

INSERT INTO sightline.generations (projection, generation, version, state, activated_at)
SELECT name, generation, version, 'active', updated_at FROM sightline.projections;

-- Set, under the row lock every batch takes, when the generation is
-- replaced: a projector still applying it stops and moves to the new one.
ALTER TABLE sightline.checkpoints ADD COLUMN superseded boolean NOT NULL DEFAULT false;
