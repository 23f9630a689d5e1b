-- position_events does what sequence_events (0001) does, with three changes:
--
-- * It answers with event IDs instead of event_log row ids. Appends commit
--   without waiting for the disk and are acknowledged only once positioned
--   (pgstore's Append). An append lost in a crash before that can leave its
--   row id to be handed out again after recovery, but never its event ID: an
--   appender waits for its event, not for whatever row takes its id next.
-- * It does its work in one statement after the lock instead of five. A run
--   is on the path of every append, and each statement's executor start-up
--   is a measurable part of it on a small machine.
-- * It picks the events to position with a plan that stays fast however
--   full the queue gets (see below).
--
-- The statement's snapshot is taken after the lock is granted, so it sees
-- every event committed before, and positions never go back. The same lock
-- as sequence_events makes the two take turns, so a process still running
-- the older code may go on sequencing beside this one.
CREATE FUNCTION sightline.position_events(max_events integer)
RETURNS TABLE (event_id uuid, "position" bigint)
LANGUAGE plpgsql
SET enable_seqscan = off
-- Its row estimates (CTE over CTE) run to millions, past jit_above_cost:
-- on a connection that leaves JIT on, every run compiled its plan first,
-- for ten milliseconds and more. sightline's own connections turn JIT off;
-- this holds for any pool a library user hands the store.
SET jit = off
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7406745143525210945);
    RETURN QUERY
    WITH prev AS (
        SELECT s.head FROM sightline.sequencer s
    ), taken AS (
        -- The plan is cached for the session, and one made while the queue
        -- was nearly empty (which it is, most of the time) re-scanned the
        -- whole queue for each row once a bulk load had filled it: one run
        -- took 17 minutes. Hence an array of ids looked up in the primary
        -- key, and no sequential scans (the SET above). Nothing is taken if
        -- the sequencer row were missing, rather than events dropped from
        -- the queue with no position.
        DELETE FROM sightline.unsequenced u
        WHERE u.id = ANY (ARRAY(SELECT x.id FROM sightline.unsequenced x ORDER BY x.id LIMIT max_events))
          AND EXISTS (SELECT 1 FROM prev)
        RETURNING u.id
    ), placed AS (
        INSERT INTO sightline.positions (position, event_row)
        SELECT prev.head + row_number() OVER (ORDER BY t.id), t.id FROM taken t, prev
        RETURNING sightline.positions.position AS pos, sightline.positions.event_row AS er
    ), newest AS (
        SELECT p.pos, p.er FROM placed p ORDER BY p.pos DESC LIMIT 1
    ), moved AS (
        UPDATE sightline.sequencer s
        SET head = n.pos, head_at = (SELECT e.created_at FROM sightline.event_log e WHERE e.id = n.er)
        FROM newest n
        RETURNING pg_notify('sightline_events', n.pos::text)
    )
    -- moved runs to completion whether or not it is read, as every
    -- data-modifying WITH does; the join only says it belongs to the run.
    SELECT (SELECT e.event_id FROM sightline.event_log e WHERE e.id = p.er), p.pos
    FROM placed p LEFT JOIN moved ON true
    ORDER BY p.pos;
END;
$$;
