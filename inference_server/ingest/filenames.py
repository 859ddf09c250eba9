"""What a camera's file name tells: the camera (its folder) and when the picture was taken."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from zoneinfo import ZoneInfo

# Foscam "MDAlarm_20160110-122532.jpg" / "Schedule_20160110-122532.jpg", Reolink
# "Front_00_20230101123456.jpg", Hikvision "..._20230101123456789_MOTION.jpg", ISO-ish
# "2023-01-01T12-34-56.jpg": year, month, day, hour, minute, second with optional separators.
_STAMP = re.compile(
    r"(?<!\d)(?P<y>(?:19|20)\d{2})[-_.]?(?P<mo>\d{2})[-_.]?(?P<d>\d{2})[-_T ]?"
    r"(?P<h>\d{2})[-_:.]?(?P<mi>\d{2})[-_:.]?(?P<s>\d{2})"
)
_SLUG_BAD = re.compile(r"[^a-z0-9_-]+")


def timestamp_from_name(name: str, tz: ZoneInfo) -> datetime | None:
    """The first valid date-time in ``name``, read in the camera's time zone; None if there is none."""
    for match in _STAMP.finditer(name):
        try:
            return datetime(
                int(match["y"]),
                int(match["mo"]),
                int(match["d"]),
                int(match["h"]),
                int(match["mi"]),
                int(match["s"]),
                tzinfo=tz,
            )
        except ValueError:
            continue
    return None


def _folder_hash(folder: str) -> str:
    return hashlib.sha256(folder.encode("utf-8", "surrogateescape")).hexdigest()


def camera_id_for_folder(folder: str) -> str:
    """A stable id (``[a-z0-9][a-z0-9_-]{0,63}``) for a camera folder name."""
    slug = _SLUG_BAD.sub("_", folder.strip().lower()).strip("_-")
    if not slug:
        slug = "camera_" + _folder_hash(folder)[:8]
    return slug[:64]


def camera_id_candidates(folder: str) -> tuple[str, ...]:
    """The ids ``folder`` may get, in order of preference: its slug, then the slug with a short
    hash of the exact folder name. ``Front Door`` and ``front_door`` slug alike; the second of
    them to appear takes the hashed id, so two folders never merge into one camera."""
    slug = camera_id_for_folder(folder)
    digest = _folder_hash(folder)
    return (slug, *(f"{slug[: 63 - n].rstrip('_-')}_{digest[:n]}" for n in (8, 16)))
