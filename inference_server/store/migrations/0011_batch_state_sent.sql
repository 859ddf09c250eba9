-- The camera's retained state as the last store of its open batch queued it (stop 40): a digest
-- of its state and object-count messages. A store that computes the same messages again queues
-- none (the broker keeps the retained ones); NULL: none queued through this batch yet, or another
-- path queued the camera's state since (a camera patch, the republish after an MQTT
-- (re)connection), so the next store queues its own.
ALTER TABLE batches ADD COLUMN state_sent bytea;
