ALTER TABLE sightline.processes DROP COLUMN runs;
