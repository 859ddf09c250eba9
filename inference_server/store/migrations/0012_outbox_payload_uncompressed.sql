-- The outbox's payloads are stored as they are, never compressed (stop 41). A payload over
-- PostgreSQL's 2 kB threshold was run through pglz before it was moved out of line: a snapshot
-- (a JPEG, 50-200 kB, which does not compress) cost 0.8 ms of the backend's CPU to find that
-- out, on every snapshot queued (bench/outbox_payload.py). A row lives until the relay has sent
-- it and the sweep deletes it: compressing it saves nothing worth its CPU. EXTERNAL still moves a
-- large value out of line (the row stays small for the relay's scans); new rows only.
ALTER TABLE outbox ALTER COLUMN payload SET STORAGE EXTERNAL;
