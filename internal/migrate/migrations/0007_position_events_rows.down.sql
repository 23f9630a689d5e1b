DROP FUNCTION IF EXISTS sightline.position_events_rows(integer, integer);
