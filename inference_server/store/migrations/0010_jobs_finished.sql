-- Done jobs by the time they finished (stop 34). The status the server publishes every 10 s
-- counts the jobs finished over the last minute and takes the latency of the last 500: without
-- an index both read the whole jobs table, which holds every image of the retention period (a
-- few hundred thousand rows after some weeks), every 10 s all day.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state = 'done';
