-- What a live batch needs to find before it may go to the server in one
-- round trip with its writes and its COMMIT. Such a batch assumes that its
-- checkpoint is where the projector left it and that each of its streams
-- stands just before the batch's first event of it, with nothing held; the
-- two functions below lock and check what it assumed, and raise if it was
-- wrong, so that the rest of the round trip, COMMIT included, is skipped
-- and rolls back. The projector then applies the batch the long way, which
-- reads the checkpoint and the revisions first (or, for the first two
-- errors, starts again from the stored checkpoint).
--
-- Error codes, which the projector matches:
--   SLCKM  the checkpoint is not where the batch assumed (detail: "commit prepare")
--   SLGEN  the generation is gone, or a newer one replaced it
--   SLREV  a stream is not where the batch assumed, or is held

-- lock_checkpoint locks a generation's checkpoint, as every batch does
-- before it writes, and raises unless it is at the position given.
CREATE FUNCTION sightline.lock_checkpoint(p_projection text, p_generation integer, p_commit bigint, p_prepare bigint)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    c sightline.checkpoints%ROWTYPE;
BEGIN
    SELECT * INTO c FROM sightline.checkpoints
    WHERE projection = p_projection AND generation = p_generation
    FOR UPDATE;
    IF NOT FOUND OR c.superseded THEN
        RAISE EXCEPTION 'generation % of % is gone or replaced', p_generation, p_projection USING ERRCODE = 'SLGEN';
    END IF;
    IF c.commit_position <> p_commit OR c.prepare_position <> p_prepare THEN
        RAISE EXCEPTION 'checkpoint of % generation % moved', p_projection, p_generation
            USING ERRCODE = 'SLCKM', DETAIL = c.commit_position || ' ' || c.prepare_position;
    END IF;
END;
$$;

-- expect_streams raises unless ok: the projector computes ok in the same
-- statement, from the generation's own revisions table and the parked
-- events, which this function cannot name.
CREATE FUNCTION sightline.expect_streams(ok boolean)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT ok THEN
        RAISE EXCEPTION 'streams are not where the batch assumed' USING ERRCODE = 'SLREV';
    END IF;
END;
$$;
