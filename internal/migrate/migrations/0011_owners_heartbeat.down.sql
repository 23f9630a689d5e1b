ALTER TABLE sightline.owners DROP COLUMN released;
ALTER TABLE sightline.owners ADD COLUMN lease_until timestamptz NOT NULL DEFAULT '-infinity';
CREATE OR REPLACE FUNCTION sightline.check_owner(p_projection text, p_owner text, p_epoch bigint)
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
