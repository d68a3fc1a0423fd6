"""Fundus-camera augmentations on prepared student images (RGB uint8, after the shared preprocessing).

What varies between screening cameras and sessions, and what the student must learn to ignore:
illumination (overall exposure and an uneven falloff across the field), colour balance and gamma,
defocus blur, a slightly rotated or shifted/zoomed field of view, left/right eyes (a mirror), and
JPEG compression. Written with OpenCV and numpy on one image at a time, rather than torchvision's
transforms, because every draw comes from a numpy generator seeded per (run seed, epoch, sample):
the same sample gets the same augmentation whether a run was resumed or not.
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
    blur_sigma: tuple[float, float] = (0.4, 1.6)
    jpeg_p: float = 0.5  # probability of a JPEG re-encode
    jpeg_quality: tuple[int, int] = (35, 95)

    def to_dict(self) -> dict:
        return asdict(self)


class FundusAugment:
    """``augment(image, rng)``: one randomly altered copy of an RGB uint8 (H, W, 3) image."""

    def __init__(self, config: AugmentConfig = AugmentConfig()):
        self.config = config

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        out = self._geometry(image, rng)
        out = self._light_and_colour(out, rng)
        if rng.random() < c.blur_p:
            out = cv2.GaussianBlur(out, (0, 0), sigmaX=float(rng.uniform(*c.blur_sigma)))
        if rng.random() < c.jpeg_p:
            quality = int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1))
            ok, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
            # Channel order is irrelevant for a round trip: encode and decode both take it as BGR.
            out = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if ok else out
        return np.ascontiguousarray(out)

    def _geometry(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        h, w = image.shape[:2]
        if rng.random() < c.hflip:
            image = image[:, ::-1]
        angle = float(rng.uniform(-c.degrees, c.degrees))
        scale = float(rng.uniform(*c.zoom))
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        matrix[:, 2] += rng.uniform(-c.shift, c.shift, size=2) * (w, h)
        # Black fill: what lies beyond the field of view in every fundus photograph.
        return cv2.warpAffine(np.ascontiguousarray(image), matrix, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))

    def _light_and_colour(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        h, w = image.shape[:2]
        # Uneven illumination: a linear gain ramp in a random direction across the field.
        direction = rng.uniform(-1.0, 1.0, size=2)
        ys, xs = np.mgrid[-1:1:complex(0, h), -1:1:complex(0, w)]
        ramp = 1.0 + c.falloff * (direction[0] * xs + direction[1] * ys) / np.sqrt(2)
        gain = rng.uniform(*c.exposure) * rng.uniform(1 - c.channel_gain, 1 + c.channel_gain, size=3)
        x = image.astype(np.float32) / 255.0
        x = x * ramp[:, :, None].astype(np.float32) * gain.astype(np.float32)
        x = np.clip(x, 0.0, 1.0) ** np.float32(rng.uniform(*c.gamma))
        return (x * 255.0 + 0.5).astype(np.uint8)
