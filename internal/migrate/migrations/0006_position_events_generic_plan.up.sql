-- position_events (0005) runs on the path of every append. Its statement
-- was planned anew on almost every run: max_events is a parameter, and
-- PostgreSQL kept choosing a custom plan over the generic one, at a
-- third of a millisecond of planning each time, as much as the run itself.
-- Its plan does not depend on max_events (the queue is read through its
-- primary key, in order, whatever the limit), so it is planned once per
-- connection.
ALTER FUNCTION sightline.position_events(integer) SET plan_cache_mode = force_generic_plan;
