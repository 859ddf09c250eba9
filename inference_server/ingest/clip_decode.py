"""A clip's decode and sampling with PyAV (FFmpeg), for ``clips.sample_clip``: the sampling, the
limits and the refusals are described there. A module of its own so that PyAV is imported with
the first clip, not with the server (``tests/server/ingest/test_clips.py``)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import av.error
import numpy as np
from PIL import Image

from inference_server.decode_budget import DecodeBudget
from inference_server.ingest.clips import ClipLimits, SampledClip, SampledFrame
from inference_server.ingest.validate import InvalidImage

_THUMB_WIDTH = 64
#: Frames decoded per second of clip at most: more is an endless or forged stream.
_MAX_DECODED_FPS = 240


@dataclass(slots=True)
class _Candidate:
    offset_s: float
    image: Image.Image
    motion: float | None


def sample(data: bytes, limits: ClipLimits, budget: DecodeBudget) -> SampledClip:
    """``clips.sample_clip`` past its size checks: the clip decoded and sampled."""
    started = time.monotonic()
    try:
        container = av.open(io.BytesIO(data), mode="r", timeout=limits.decode_timeout_s)
    except av.error.FFmpegError as err:
        raise _open_refusal(data, err) from err
    with container:
        if not container.streams.video:
            raise InvalidImage("corrupt_clip", f"no video stream in the {container.format.name} container")
        stream = container.streams.video[0]
        width, height = stream.codec_context.width, stream.codec_context.height
        _check_size(width, height, limits)
        declared = _declared_duration(container, stream)
        if declared is not None and declared > limits.max_duration_s:
            raise InvalidImage("clip_too_long", f"{declared:.1f} s > limit {limits.max_duration_s:g} s")
        scale = min(1.0, limits.frame_max_side / max(width, height))
        out_w, out_h = max(2, round(width * scale)) // 2 * 2, max(2, round(height * scale)) // 2 * 2
        # The decoder's own frames (a few references, YUV) and the kept RGB frames (4 bytes a pixel in Pillow).
        need = 8 * width * height * 2 + limits.max_frames * out_w * out_h * 4
        with budget.hold(need):
            candidates, decoded, duration = _decode(
                container, stream, declared, limits, (out_w, out_h), started, len(data)
            )
        # Read while the container is open: its streams are freed with it (CI of 37a4bed: a good
        # clip refused as "120 of the 4611756388245323776 frames its header declares").
        declared_frames, format_name, codec_name = stream.frames, container.format.name, stream.codec_context.name
    if not candidates:
        raise InvalidImage("corrupt_clip", "no frame could be decoded")
    if declared_frames and decoded < 0.9 * declared_frames:
        raise InvalidImage("truncated", f"{decoded} of the {declared_frames} frames its header declares")
    frames = [
        SampledFrame(c.offset_s, _jpeg(c.image, limits.jpeg_quality), c.image.width, c.image.height, c.motion)
        for c in candidates
    ]
    return SampledClip(
        container=format_name,
        codec=codec_name,
        width=width,
        height=height,
        duration_s=round(duration, 3),
        frames_decoded=decoded,
        frames=frames,
        decode_s=time.monotonic() - started,
    )


def _decode(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    declared: float | None,
    limits: ClipLimits,
    size: tuple[int, int],
    started: float,
    data_size: int,
) -> tuple[list[_Candidate], int, float]:
    """(kept frames in time order, frames decoded, duration seen)."""
    parts = max(1, limits.max_frames - 1)
    part_s = max((declared or limits.max_duration_s) / parts, 1 / limits.analysis_fps)
    first: _Candidate | None = None
    best: dict[int, _Candidate] = {}
    prev: np.ndarray | None = None
    last_analysed = -1e9
    decoded = 0
    last_offset = 0.0
    start = _seconds(stream.start_time, stream.time_base) or 0.0
    thumb_h = max(1, round(_THUMB_WIDTH * stream.codec_context.height / stream.codec_context.width))
    max_decoded = int(limits.max_duration_s * _MAX_DECODED_FPS)
    try:
        for frame in _frames(container, stream):
            decoded += 1
            if time.monotonic() - started > limits.decode_timeout_s:
                raise InvalidImage("clip_decode_timeout", f"still decoding after {limits.decode_timeout_s:g} s")
            if decoded > max_decoded:
                raise InvalidImage("clip_too_long", f"more than {max_decoded} frames")
            at = _seconds(frame.pts, frame.time_base)
            offset = (at - start) if at is not None else decoded / float(stream.average_rate or 25)
            if offset > limits.max_duration_s:
                raise InvalidImage("clip_too_long", f"frames past {limits.max_duration_s:g} s")
            last_offset = max(last_offset, offset)
            if offset - last_analysed < 1 / limits.analysis_fps and first is not None:
                continue
            last_analysed = offset
            grey = frame.reformat(width=_THUMB_WIDTH, height=thumb_h, format="gray").to_ndarray().astype(np.float32)
            if first is None:
                first = _Candidate(max(0.0, offset), _rgb(frame, size), None)
                prev = grey
                continue
            assert prev is not None
            motion = float(np.abs(grey - prev).mean())
            prev = grey
            if motion < limits.motion_threshold:
                continue
            part = int(offset // part_s)
            held = best.get(part)
            if held is None or (held.motion or 0.0) < motion:
                best[part] = _Candidate(max(0.0, offset), _rgb(frame, size), round(motion, 2))
                if len(best) > parts:  # parts of unknown length: keep the strongest motion
                    del best[min(best, key=lambda k: best[k].motion or 0.0)]
    except _PacketFailed as failed:
        packet = failed.packet
        if packet.pos is not None and packet.pos + packet.size >= data_size:
            # The packet the decoder choked on is the one the data ends in: the upload stopped early.
            raise InvalidImage("truncated", f"the data ends inside frame data after {decoded} frames") from failed
        raise InvalidImage("corrupt_clip", f"decoding failed after {decoded} frames: {failed}") from failed
    except av.error.FFmpegError as err:
        raise InvalidImage("corrupt_clip", f"reading failed after {decoded} frames: {err}") from err
    kept = ([first] if first is not None else []) + [best[k] for k in sorted(best)]
    return kept, decoded, declared if declared is not None else last_offset


class _PacketFailed(Exception):
    def __init__(self, error: av.error.FFmpegError, packet: av.Packet[av.VideoStream]) -> None:
        super().__init__(str(error))
        self.error = error
        self.packet = packet


def _frames(container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
    """The stream's frames; a decode error names the packet it met (``_PacketFailed``)."""
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError as err:
            raise _PacketFailed(err, packet) from err
        yield from frames


def _rgb(frame: av.VideoFrame, size: tuple[int, int]) -> Image.Image:
    width, height = size
    return Image.fromarray(frame.reformat(width=width, height=height, format="rgb24").to_ndarray())


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _seconds(value: int | None, base: Fraction | None) -> float | None:
    if value is None or base is None:
        return None
    return float(value * base)


def _declared_duration(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    """The duration the header declares (the stream's, else the container's), or None."""
    seconds = _seconds(stream.duration, stream.time_base)
    if seconds is None and container.duration is not None:
        seconds = container.duration / av.time_base
    return seconds if seconds is not None and seconds >= 0 else None


def _open_refusal(data: bytes, err: av.error.FFmpegError) -> InvalidImage:
    # An MP4/MOV written front to back keeps its index (moov) at the end: an upload cut short
    # has the media data but no index, and FFmpeg cannot open it.
    if data[4:8] == b"ftyp" and b"mdat" in data[:4096] and b"moov" not in data:
        return InvalidImage("truncated", "the MP4/MOV index (moov) is missing: the upload stopped early")
    return InvalidImage("corrupt_clip", f"not a readable video: {err}")


def _check_size(width: int, height: int, limits: ClipLimits) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImage("corrupt_clip", f"video stream declares {width}x{height}")
    if width * height > limits.max_pixels:
        raise InvalidImage("too_many_pixels", f"{width}x{height} = {width * height} pixels > limit {limits.max_pixels}")
    if min(width, height) < limits.min_side:
        raise InvalidImage("too_small", f"{width}x{height} < {limits.min_side} px")
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise InvalidImage("bad_aspect_ratio", f"{width}x{height} is longer than {limits.max_aspect_ratio:g}:1")
