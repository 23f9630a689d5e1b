DROP FUNCTION IF EXISTS sightline.position_events(integer);
