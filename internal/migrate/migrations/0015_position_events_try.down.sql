DROP FUNCTION IF EXISTS sightline.position_events_try(integer, integer);
