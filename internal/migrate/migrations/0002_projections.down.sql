DROP VIEW IF EXISTS readmodel.projection_status;
DROP TABLE IF EXISTS sightline.gaps;
DROP TABLE IF EXISTS sightline.checkpoints;
DROP TABLE IF EXISTS sightline.projections;
