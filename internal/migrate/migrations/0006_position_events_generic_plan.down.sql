ALTER FUNCTION sightline.position_events(integer) RESET plan_cache_mode;
