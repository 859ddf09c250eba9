"""Publishing: the outbox relay, which sends what the pipeline committed to MQTT (``comms/``)."""
