-- What each process runs ('projection/segment'), so that a projection, or
-- a segment of one, goes only to a process that runs it; NULL for a
-- process that does not say.
ALTER TABLE sightline.processes ADD COLUMN IF NOT EXISTS runs text[];
