"""MQTT shared by ingest and publish: the connection (paho-mqtt), the contract's topic names and
the embedded broker for the demo and tests (as Frigate's ``comms/``)."""
