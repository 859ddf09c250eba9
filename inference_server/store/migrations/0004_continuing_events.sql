-- Continuing events (issue 16.5): activity that outlasts a batch window continues the same event.
-- A batch opened because its predecessor's window ran out while the activity went on carries the
-- predecessor's event from the start (event_id), the batch it continues and the time its chain
-- began (NULL: the batch starts its own chain, at opened_at), so the event ends when the activity
-- goes idle or when the chain reaches event_max_s.

ALTER TABLE batches
    ADD COLUMN continues_batch_id uuid REFERENCES batches (id) ON DELETE SET NULL,
    ADD COLUMN chain_started_at timestamptz;
-- The batches of one event (a chain) are read together when the event is judged.
CREATE INDEX batches_event ON batches (event_id) WHERE event_id IS NOT NULL;
