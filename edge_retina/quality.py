"""Image-quality gate: is a photograph gradable, and if not, why.

Metrics are computed on the decoded image downscaled to ``WORK_SIDE`` px, inside the field of view
(shrunk by a rim so the FoV edge is not measured). Reasons, checked in this order:

- ``no_field_of_view``: nothing to grade (all black, all white, a uniform frame).
- ``not_fundus``: the colours inside the FoV are not those of a retina (red/orange dominant, little
  blue), e.g. an ordinary photograph.
- ``too_dark`` / ``overexposed``: exposure outside what a grader can use.
- ``too_blurry``: no fine detail (vessel edges) left.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # a runtime import would be circular: the preprocess pipeline imports this module
    from edge_retina.preprocess.fov import FieldOfView

#: Longer side, in px, of the copy the metrics are computed on (fixed, so that the sharpness
#: measure does not depend on the source resolution).
WORK_SIDE = 256
#: The outer part of the FoV left out of the metrics, as a fraction of the radius.
RIM_FRACTION = 0.05

# Thresholds: see THRESHOLDS.
THRESHOLDS = {
    "uniform_std": 4.0,
    "blank_level": 12.0,
    "white_level": 245.0,
    "min_red_share": 0.38,
    "max_blue_share": 0.22,
    "min_brightness": 25.0,
    "max_clipped_fraction": 0.25,
    "min_sharpness": 1.0,
}


@dataclass(frozen=True)
class Quality:
    gradable: bool
    reason: str | None  # None when gradable, else one of REASONS
    metrics: dict[str, float] = field(default_factory=dict)


REASONS = ("no_field_of_view", "not_fundus", "too_dark", "overexposed", "too_blurry")


def quality_metrics(rgb: np.ndarray, fov: FieldOfView) -> dict[str, float]:
    """The measurements the gate decides on, for an RGB uint8 image and its FoV (same coordinates).

    Images larger than ``WORK_SIDE`` are downscaled first (the pipeline passes its own small copy).
    """
    height, width = rgb.shape[:2]
    scale = min(1.0, WORK_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA) if scale < 1.0 else rgb
    inner = _shrunk(fov, RIM_FRACTION).mask(*size).astype(np.uint8)
    if cv2.countNonZero(inner) < 64:  # a degenerate FoV: measure the whole frame
        inner[:] = 1
    luma = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    luma_mean, luma_std = (float(v.item()) for v in cv2.meanStdDev(luma, mask=inner))
    red, green, blue, _ = cv2.mean(small, mask=inner)
    total = red + green + blue or 1.0
    brightest = np.maximum(np.maximum(small[:, :, 0], small[:, :, 1]), small[:, :, 2])
    clipped = cv2.countNonZero((brightest >= 250).view(np.uint8) & inner) / cv2.countNonZero(inner)
    # Fine detail: mean absolute Laplacian of the green channel (vessels are sharpest there), away
    # from the FoV edge, relative to the green level so that dim but sharp photos are not "blurry".
    green_channel = np.ascontiguousarray(small[:, :, 1])
    detail = cv2.erode(inner, np.ones((5, 5), np.uint8))
    if cv2.countNonZero(detail) < 64:
        detail = inner
    edges = cv2.convertScaleAbs(cv2.Laplacian(green_channel, cv2.CV_16S, ksize=3))
    return {
        "coverage": float(fov.coverage),
        "brightness": luma_mean,
        "contrast": luma_std,
        "red_share": red / total,
        "blue_share": blue / total,
        "clipped_fraction": clipped,
        "sharpness": 100.0 * cv2.mean(edges, mask=detail)[0] / max(cv2.mean(green_channel, mask=detail)[0], 1.0),
    }


def _shrunk(fov: FieldOfView, fraction: float) -> FieldOfView:
    if not fov.found:
        return fov
    return replace(fov, radii=(fov.radii[0] * (1 - fraction), fov.radii[1] * (1 - fraction)))


def assess_quality(rgb: np.ndarray, fov: FieldOfView) -> Quality:
    """Gate an RGB uint8 image with its field of view (in the same coordinates)."""
    m = quality_metrics(rgb, fov)
    t = THRESHOLDS
    if m["contrast"] < t["uniform_std"] or m["brightness"] < t["blank_level"] or m["brightness"] > t["white_level"]:
        reason = "no_field_of_view"
    elif m["red_share"] < t["min_red_share"] or m["blue_share"] > t["max_blue_share"]:
        reason = "not_fundus"
    elif m["brightness"] < t["min_brightness"]:
        reason = "too_dark"
    elif m["clipped_fraction"] > t["max_clipped_fraction"]:
        reason = "overexposed"
    elif m["sharpness"] < t["min_sharpness"]:
        reason = "too_blurry"
    else:
        reason = None
    return Quality(reason is None, reason, m)
