DROP TABLE sightline.verifications;
