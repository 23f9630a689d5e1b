-- position_events_try positions events as position_events_rows (0007)
-- does, if the sequencer's lock is free, inside the caller's transaction:
-- an append's group calls it after its insert, so that when no run is
-- under way, the append and its positions commit in one transaction
-- instead of two. When another transaction holds the lock (a sequencer
-- run, or another group doing the same), it returns nothing at once and
-- the appends wait for a sequencer run, as before.
--
-- The lock is a transaction's: the caller holds it until it commits, so
-- its positions become visible together, with the head, and nobody else
-- gives positions meanwhile. Its commit makes positions durable before
-- anyone is told them, so it waits for the local flush, as a sequencer
-- run's does: synchronous_commit is kept, or set to local if it is off.
-- A caller that positions nothing commits without waiting for the disk,
-- as appends do (pgstore's unflushed): the run that positions its events
-- flushes them. So the caller leaves synchronous_commit to this function.
CREATE FUNCTION sightline.position_events_try(max_events integer, max_rows integer)
RETURNS TABLE (event_id uuid, "position" bigint, stream_id text, revision bigint, type text,
               data jsonb, metadata jsonb, created_at timestamptz)
LANGUAGE plpgsql
SET jit = off
AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(7406745143525210945) THEN
        PERFORM set_config('synchronous_commit', 'off', true);
        RETURN;
    END IF;
    IF current_setting('synchronous_commit') = 'off' THEN
        PERFORM set_config('synchronous_commit', 'local', true);
    END IF;
    -- position_events takes the same lock again, which a transaction holds
    -- as many times as it takes it.
    RETURN QUERY SELECT * FROM sightline.position_events_rows(max_events, max_rows);
END;
$$;
