ALTER TABLE sightline.checkpoints DROP COLUMN superseded;
DROP TABLE sightline.generations;
