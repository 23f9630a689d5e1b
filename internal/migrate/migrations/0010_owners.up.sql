-- Several processes share the projections: each is applied by the one
-- process that holds its lease. processes lists the running ones, each
-- beating its heart; owners says who holds each projection (segment 0
-- until projections are split), since when, until when, and the epoch,
-- which every takeover raises and every batch of the owner checks.
CREATE TABLE sightline.processes (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    pid          integer NOT NULL,
    projects     boolean NOT NULL DEFAULT true, -- false: it only serves
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sightline.owners (
    projection  text NOT NULL,
    segment     integer NOT NULL DEFAULT 0,
    owner       text NOT NULL,
    epoch       bigint NOT NULL,
    since       timestamptz NOT NULL DEFAULT now(),
    lease_until timestamptz NOT NULL,
    PRIMARY KEY (projection, segment)
);

-- check_owner is the fence of a batch: it raises unless p_owner still
-- holds the projection at p_epoch, and holds the row (FOR SHARE) until the
-- batch ends, so that a takeover waits for the batch, and a batch after a
-- takeover writes nothing.
CREATE FUNCTION sightline.check_owner(p_projection text, p_owner text, p_epoch bigint)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM sightline.owners
    WHERE projection = p_projection AND segment = 0 AND owner = p_owner AND epoch = p_epoch
    FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'projection % is no longer held by process % at epoch %', p_projection, p_owner, p_epoch
            USING ERRCODE = 'SLOWN';
    END IF;
END;
$$;
