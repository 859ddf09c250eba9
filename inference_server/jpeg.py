"""libjpeg-turbo's strict decode, shared by the ingest door's check (``ingest/validate.py``) and
the detect worker's decode (``pipeline/decode.py``): the same refusals in both.

A module of its own, not ``decode_budget``: the budget's malloc settings are tested by counting
page faults in a process that imports only the budget, so it keeps to the imports it had (one CI
run saw that test fail while the budget imported simplejpeg; it did not reproduce in isolation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import simplejpeg

#: The one libjpeg warning a whole picture raises (some cameras pad the scan before a marker):
#: tolerated by ``decode_strict``; every other warning refuses the picture.
HARMLESS = "extraneous bytes before marker"


def decode_strict(data: bytes, **options: Any) -> npt.NDArray[np.uint8]:
    """libjpeg-turbo's decode (``simplejpeg.decode_jpeg`` with ``options``), strict: a warning is
    an error (``ValueError``), but for ``HARMLESS``, after which it decodes again leniently."""
    try:
        out: npt.NDArray[np.uint8] = simplejpeg.decode_jpeg(data, strict=True, **options)
    except ValueError as err:
        if HARMLESS not in str(err).lower():
            raise
        out = simplejpeg.decode_jpeg(data, strict=False, **options)
    return out


def decode_into(data: bytes, pixels: npt.NDArray[np.uint8]) -> None:
    """``decode_strict`` as RGBX into ``pixels`` (height, width, 4), at the DCT scale that gives
    its shape. ``ValueError``: the data; ``RuntimeError``: a shape that is no DCT scale of the
    picture (1, 1/2, 1/4, 1/8), the caller's bug."""
    height, width = pixels.shape[:2]
    out = decode_strict(data, colorspace="RGBX", min_height=height, min_width=width, buffer=pixels)
    if out.shape != pixels.shape:
        raise RuntimeError(f"libjpeg-turbo decoded {out.shape}, not the {pixels.shape} asked for")
