-- position_events_rows positions events as position_events (0005) does and
-- also returns the rows it positioned, when there are at most max_rows of
-- them (the data columns are NULL otherwise). The sequencer hands them to
-- the process's live subscribers, which then need no read of their own to
-- learn what a run added: one round trip fewer between an append and the
-- read models, and one read fewer per run. A bulk run (more than max_rows)
-- returns only IDs and positions, as before.
--
-- position_events stays as it is, for processes still running older code.
CREATE FUNCTION sightline.position_events_rows(max_events integer, max_rows integer)
RETURNS TABLE (event_id uuid, "position" bigint, stream_id text, revision bigint, type text,
               data jsonb, metadata jsonb, created_at timestamptz)
LANGUAGE plpgsql
-- As position_events: the rows are found through the event_id key however
-- large the log grows, and the plans are made once per connection.
SET enable_seqscan = off
SET jit = off
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    ids uuid[];
    positions bigint[];
BEGIN
    SELECT array_agg(p.event_id ORDER BY p.position), array_agg(p.position ORDER BY p.position)
    INTO ids, positions
    FROM sightline.position_events(max_events) p;
    -- A statement of its own: its snapshot, taken after position_events',
    -- sees every event that one positioned. One statement around the call
    -- would read the log with a snapshot taken before the call waited for
    -- its lock, and miss the events committed meanwhile.
    RETURN QUERY
    SELECT u.id, u.pos, e.stream_id, e.revision, e.type, e.data, e.metadata, e.created_at
    FROM unnest(ids, positions) AS u(id, pos)
    LEFT JOIN sightline.event_log e ON cardinality(ids) <= max_rows AND e.event_id = u.id
    ORDER BY u.pos;
END;
$$;
