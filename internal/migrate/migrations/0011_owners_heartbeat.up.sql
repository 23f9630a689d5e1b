-- A process's heartbeat is the lease of everything it holds, so that
-- renewing touches no row a batch keeps: owners says whether its holder
-- gave a projection up instead of until when it holds it.
ALTER TABLE sightline.owners DROP COLUMN lease_until;
ALTER TABLE sightline.owners ADD COLUMN released boolean NOT NULL DEFAULT false;

-- The fence takes FOR KEY SHARE, which a plain UPDATE (giving up) does not
-- wait for; a takeover locks the row FOR UPDATE first, which waits for
-- every batch of the holder. A projection given up fences too.
CREATE OR REPLACE FUNCTION sightline.check_owner(p_projection text, p_owner text, p_epoch bigint)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM sightline.owners
    WHERE projection = p_projection AND segment = 0 AND owner = p_owner AND epoch = p_epoch AND NOT released
    FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'projection % is no longer held by process % at epoch %', p_projection, p_owner, p_epoch
            USING ERRCODE = 'SLOWN';
    END IF;
END;
$$;
