DROP FUNCTION IF EXISTS sightline.expect_streams(boolean);
DROP FUNCTION IF EXISTS sightline.lock_checkpoint(text, integer, bigint, bigint);
