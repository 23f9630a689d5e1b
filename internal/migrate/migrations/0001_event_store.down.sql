DROP FUNCTION IF EXISTS sightline.sequence_events(integer);
DROP VIEW IF EXISTS sightline.events;
DROP TABLE IF EXISTS sightline.sequencer;
DROP TABLE IF EXISTS sightline.positions;
DROP TABLE IF EXISTS sightline.unsequenced;
DROP TABLE IF EXISTS sightline.event_log;
