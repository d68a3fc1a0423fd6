"""Fundus-camera augmentations on prepared images (RGB uint8, after the shared preprocessing).

What varies between screening cameras and sessions: illumination (overall exposure and an uneven
falloff across the field), colour balance and gamma, defocus blur, a slightly rotated or
shifted/zoomed field of view, left/right eyes (a mirror), and JPEG compression.

A random draw (``AugmentDraw``) is separate from applying it, and is expressed in units of the
image's side, not in pixels: the same draw alters the teacher's 224-px copy and the student's
192-px copy of a photo alike, so the teacher can embed exactly the view the student is shown
("consistent" function matching; Beyer et al., 2022, "Knowledge distillation: A good teacher is
patient and consistent"). Written with OpenCV and numpy rather than torchvision's transforms because
every draw comes from a numpy generator the caller seeds per (run seed, photo, view): the same view
of the same photo is the same image whether a run was resumed or not.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.5  # probability of a mirror (left and right eyes)
    degrees: float = 12.0  # rotation range, +-
    shift: float = 0.04  # field-of-view centre shift, +- fraction of the side
    zoom: tuple[float, float] = (0.92, 1.08)  # field-of-view scale range
    exposure: tuple[float, float] = (0.7, 1.3)  # overall gain range
    falloff: float = 0.25  # uneven illumination: +- gain change across the field
    channel_gain: float = 0.12  # colour balance: +- per-channel gain
    gamma: tuple[float, float] = (0.8, 1.25)
    blur_p: float = 0.3  # probability of defocus blur
    blur_sigma: tuple[float, float] = (0.002, 0.0085)  # Gaussian sigma, fraction of the side (0.4-1.6 px at 192)
    jpeg_p: float = 0.5  # probability of a JPEG re-encode
    jpeg_quality: tuple[int, int] = (35, 95)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class AugmentDraw:
    """One draw of every random choice, independent of the image's size."""

    mirror: bool
    angle: float  # degrees
    zoom: float
    shift: tuple[float, float]  # (x, y), fraction of the side
    ramp: tuple[float, float]  # direction and strength of the illumination falloff (x, y)
    gain: tuple[float, float, float]  # per channel, exposure included
    gamma: float
    blur_sigma: float  # fraction of the side; 0 = no blur
    jpeg_quality: int  # 0 = no re-encode


class FundusAugment:
    """``augment(image, rng)``: one randomly altered copy of an RGB uint8 (H, W, 3) image;
    ``augment.apply(image, augment.draw(rng))`` does the same in two steps (one draw, several sizes)."""

    def __init__(self, config: AugmentConfig = AugmentConfig()):
        self.config = config

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, self.draw(rng))

    def draw(self, rng: np.random.Generator) -> AugmentDraw:
        c = self.config
        blur = rng.random() < c.blur_p
        jpeg = rng.random() < c.jpeg_p
        return AugmentDraw(
            mirror=bool(rng.random() < c.hflip),
            angle=float(rng.uniform(-c.degrees, c.degrees)),
            zoom=float(rng.uniform(*c.zoom)),
            shift=tuple(float(v) for v in rng.uniform(-c.shift, c.shift, size=2)),
            ramp=tuple(float(v) for v in rng.uniform(-1.0, 1.0, size=2) * c.falloff),
            gain=tuple(float(v) for v in rng.uniform(*c.exposure)
                       * rng.uniform(1 - c.channel_gain, 1 + c.channel_gain, size=3)),
            gamma=float(rng.uniform(*c.gamma)),
            blur_sigma=float(rng.uniform(*c.blur_sigma)) if blur else 0.0,
            jpeg_quality=int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1)) if jpeg else 0,
        )

    def apply(self, image: np.ndarray, draw: AugmentDraw) -> np.ndarray:
        h, w = image.shape[:2]
        out = self._geometry(image, draw)
        out = self._light_and_colour(out, draw)
        if draw.blur_sigma > 0:
            out = cv2.GaussianBlur(out, (0, 0), sigmaX=draw.blur_sigma * max(h, w))
        if draw.jpeg_quality:
            ok, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, draw.jpeg_quality])
            # Channel order is irrelevant for a round trip: encode and decode both take it as BGR.
            out = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if ok else out
        return np.ascontiguousarray(out)

    @staticmethod
    def _geometry(image: np.ndarray, draw: AugmentDraw) -> np.ndarray:
        h, w = image.shape[:2]
        if draw.mirror:
            image = image[:, ::-1]
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), draw.angle, draw.zoom)
        matrix[:, 2] += np.multiply(draw.shift, (w, h))
        # Black fill: what lies beyond the field of view in every fundus photograph.
        return cv2.warpAffine(np.ascontiguousarray(image), matrix, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))

    @staticmethod
    def _light_and_colour(image: np.ndarray, draw: AugmentDraw) -> np.ndarray:
        h, w = image.shape[:2]
        # Uneven illumination: a linear gain ramp in the drawn direction across the field.
        ys, xs = np.mgrid[-1:1:complex(0, h), -1:1:complex(0, w)]
        ramp = 1.0 + (draw.ramp[0] * xs + draw.ramp[1] * ys) / np.sqrt(2)
        x = image.astype(np.float32) / 255.0
        x = x * ramp[:, :, None].astype(np.float32) * np.asarray(draw.gain, np.float32)
        x = np.clip(x, 0.0, 1.0) ** np.float32(draw.gamma)
        return (x * 255.0 + 0.5).astype(np.uint8)


def view_rng(seed: int, key: str, view: int) -> np.random.Generator:
    """The generator of one view of one photo (``key``: its content sha256)."""
    return np.random.default_rng([seed, view, *(int(key[i:i + 8], 16) for i in range(0, 32, 8))])


def make_view(augment: FundusAugment, image: np.ndarray, seed: int, key: str, view: int) -> np.ndarray:
    """View 0 is the clean photo; the others are camera-like variations, the same for any image size."""
    return image if view == 0 else augment.apply(image, augment.draw(view_rng(seed, key, view)))
