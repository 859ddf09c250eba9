"""Ingest: camera folders (FTP uploads), later REST uploads and MQTT."""
