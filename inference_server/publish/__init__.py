"""Publishing: MQTT topics, the outbox relay, the embedded broker."""
