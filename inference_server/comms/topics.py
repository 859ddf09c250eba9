"""MQTT topic names of the contract (docs/architecture.md, "MQTT"); the prefix is configurable."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = "hsi"

    @property
    def availability(self) -> str:
        return f"{self.prefix}/availability"

    @property
    def discovery(self) -> str:
        return f"{self.prefix}/discovery"

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def events(self) -> str:
        return f"{self.prefix}/events"

    @property
    def digest(self) -> str:
        """The digests (not retained: a digest is a message, sent once)."""
        return f"{self.prefix}/digest"

    def camera_state(self, camera_id: str) -> str:
        return f"{self.prefix}/cameras/{camera_id}/state"

    def camera_snapshot(self, camera_id: str) -> str:
        return f"{self.prefix}/cameras/{camera_id}/snapshot"

    def camera_tamper(self, camera_id: str) -> str:
        """``TamperState``, retained (pipeline/tamper.py)."""
        return f"{self.prefix}/cameras/{camera_id}/tamper"

    def camera_objects(self, camera_id: str, label: str) -> str:
        return f"{self.prefix}/cameras/{camera_id}/objects/{label}"

    def ingest(self, camera_id: str = "+") -> str:
        return f"{self.prefix}/ingest/{camera_id}"
