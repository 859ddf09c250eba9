"""Ingest: camera folders (watcher, built-in FTP receiver), REST uploads and MQTT, each through
the one ``Ingestor`` that turns an image into an image row and a job, or a quarantine entry."""
