DROP FUNCTION IF EXISTS sightline.check_owner(text, text, bigint);
DROP TABLE IF EXISTS sightline.owners;
DROP TABLE IF EXISTS sightline.processes;
