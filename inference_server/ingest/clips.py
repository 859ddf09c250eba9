"""Short video clips from cameras (``.mp4``, ``.mkv``, ``.avi``, ``.mov``): checked, decoded with
PyAV (FFmpeg) in bounded time and memory, and sampled into a few still frames for the detector.

Sampling is motion-aware and bounded: the clip is cut into ``max_frames - 1`` equal parts; the
first frame is always kept (the scene as the clip opens), and from each part the analysed frame
that differs most from the one analysed before it (mean absolute difference of 64-pixel-wide grey
thumbnails, at most ``analysis_fps`` a second), if that difference reaches ``motion_threshold``.
A still scene gives one frame; a busy one at most ``max_frames``, spread over the clip.

Every refusal is an ``InvalidImage`` with a stable reason, quarantined like a bad picture:
``corrupt_clip`` (no container, no video stream, undecodable data), ``truncated`` (the data
stops before the frames its header declares), ``clip_too_long`` (a declared or decoded duration,
or a frame count, past the limits: an endless stream), ``clip_decode_timeout`` (decoding ran
past ``decode_timeout_s``), and the picture-size reasons of stills (``too_many_pixels``,
``too_small``, ``bad_aspect_ratio``, ``too_large``, ``empty_file``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from inference_server.ingest.validate import InvalidImage

if TYPE_CHECKING:
    from inference_server.decode_budget import DecodeBudget

#: Suffix → media type of the clips cameras upload.
CLIP_MEDIA_TYPES: dict[str, str] = {
    ".mp4": "video/mp4",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
}
CLIP_SUFFIXES = frozenset(CLIP_MEDIA_TYPES)


@dataclass(frozen=True, slots=True)
class ClipLimits:
    max_bytes: int
    max_duration_s: float
    max_frames: int
    decode_timeout_s: float
    max_pixels: int
    min_side: int
    max_aspect_ratio: float = 20.0
    analysis_fps: float = 5.0
    motion_threshold: float = 2.0
    frame_max_side: int = 1920
    jpeg_quality: int = 90


@dataclass(frozen=True, slots=True)
class SampledFrame:
    #: Seconds from the clip's first frame.
    offset_s: float
    jpeg: bytes
    width: int
    height: int
    #: Mean absolute grey difference to the frame analysed before it (0..255); None: the first frame.
    motion: float | None


@dataclass(frozen=True, slots=True)
class SampledClip:
    container: str
    codec: str
    width: int
    height: int
    duration_s: float
    frames_decoded: int
    frames: list[SampledFrame]
    decode_s: float


def sample_clip(data: bytes, limits: ClipLimits, budget: DecodeBudget) -> SampledClip:
    """Decode ``data`` and return its sampled frames (JPEG), or raise ``InvalidImage``.

    PyAV (FFmpeg's libraries, ~17 MB of the process's memory) is imported with the first clip
    (``clip_decode``): a server whose cameras send pictures never loads it."""
    if not data:
        raise InvalidImage("empty_file", "0 bytes")
    if len(data) > limits.max_bytes:
        raise InvalidImage("too_large", f"{len(data)} bytes > clip limit {limits.max_bytes}")
    from inference_server.ingest import clip_decode

    return clip_decode.sample(data, limits, budget)


def sniff_media_type(data: bytes) -> str | None:
    """The clip media type its first bytes show (the container decides, not the name), or None."""
    if data[4:8] == b"ftyp":
        return "video/quicktime" if data[8:12] == b"qt  " else "video/mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "video/x-matroska"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "video/x-msvideo"
    return None


def suffix_for(media_type: str) -> str:
    return next(suffix for suffix, media in CLIP_MEDIA_TYPES.items() if media == media_type)
