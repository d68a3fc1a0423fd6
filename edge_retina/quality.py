"""Image-quality gate: is a photograph gradable, and if not, why.

Metrics are computed on the decoded image downscaled to ``WORK_SIDE`` px (the pipeline passes the
copy it found the field of view on), inside the field of view shrunk by ``RIM_FRACTION`` so that
the FoV edge is not measured. Reasons, checked in this order:

- ``no_field_of_view``: nothing to grade: no bright region (all black, all white: white counts as
  background, see fov.py) or a uniform frame.
- ``not_fundus``: not a colour fundus photograph: no colour (a greyscale picture), red share too
  low or blue share too high inside the FoV (a retina is red/orange with little blue), or -- when
  no FoV border was found, so the shape says nothing -- far more fine texture than a retina has
  (a cat's fur, a cup on a table, an astronaut's suit).
- ``too_dark`` / ``overexposed``: mean luma too low / most of the FoV washed out to white.
- ``too_blurry``: fine structure (vessels) gone relative to the brightness.

How the thresholds were set (``THRESHOLDS``): the gate was run on all 4,879 photographs in
../shared/datasets (HEI-MED 177, RIM-ONE 485, eye4class 4,217; all graded by ophthalmologists, so
all should pass) and on scikit-image's non-fundus pictures (astronaut, coffee, chelsea, camera,
rocket, immunohistochemistry) plus synthetic black/white/grey/noise frames and darkened, brightened
or blurred copies of ``skimage.data.retina``. Each threshold sits just outside the range of the
real photos:

==========================  ================================  ================================
metric                      real photos: min / 0.1 % / max    threshold: what fails
==========================  ================================  ================================
coverage                    0.42 / 0.48 / 0.98                < 0.05: black, white, grey frames
contrast (luma std)         3.0 / 3.8 / 97                    < 1.0: uniform frames
chroma (max - min channel)  4.4 / 7.7 / -                     < 2: greyscale (camera: 0)
red_share                   0.304 / 0.326 / 0.92              < 0.30: rocket (0.27)
blue_share                  0.006 / - / 0.335                 > 0.34: rocket (0.42)
texture, no border found    max 10.9 (660 photos)             > 12.5: coffee 16.6, chelsea 21,
                                                              astronaut 24, immunohisto. 31
brightness (mean luma)      6.2 / 13.6 / 245                  < 10: 1 photo (near black)
white_fraction              99.9 %: 0.35, max 0.69            > 0.5: 5 photos (white-outs)
sharpness                   0.094 / 0.15 / 118                < 0.08: retina blurred with a
                                                              sigma of 1/32 of its width (0.075)
==========================  ================================  ================================

With these, 4,873 of the 4,879 photos are gradable; the 6 that are not (5 ``overexposed``, 1
``too_dark``, all in eye4class) are indeed white-outs and a near-black frame. The dataset's
cataract photos are very blurry yet graded, which is why ``too_blurry`` only catches extreme blur.
Texture depends on the working scale, so changing ``WORK_SIDE`` or the downscaling means running
this survey again.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from edge_retina.preprocess.fov import FieldOfView, downscale

#: Longer side, in px, of the copy the metrics are computed on (fixed, so that the sharpness
#: measure does not depend on the source resolution).
WORK_SIDE = 256
#: The outer part of the FoV left out of the metrics, as a fraction of the radius.
RIM_FRACTION = 0.05
# Detail metrics skip a further 4 px band inside the FoV; the top-hats see structures up to ~9 px
# (vessels are 1-6 px wide at this scale); luma >= 245 counts as washed out.
_DETAIL_ERODE = np.ones((9, 9), np.uint8)
_TEXTURE_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
_WHITE_LUMA = 245

#: Decision thresholds, set from data (see the module docstring).
THRESHOLDS = {
    "min_coverage": 0.05,
    "min_contrast": 1.0,
    "min_chroma": 2.0,
    "min_red_share": 0.30,
    "max_blue_share": 0.34,
    "max_texture_without_border": 12.5,
    "min_brightness": 10.0,
    "max_white_fraction": 0.5,
    "min_sharpness": 0.08,
}


@dataclass(frozen=True)
class Quality:
    """The gate's verdict: ``reason`` is None when gradable; ``metrics`` are what it decided on."""

    gradable: bool
    reason: str | None  # None when gradable, else one of REASONS
    metrics: dict[str, float] = field(default_factory=dict)


REASONS = ("no_field_of_view", "not_fundus", "too_dark", "overexposed", "too_blurry")


def quality_metrics(rgb: np.ndarray, fov: FieldOfView) -> dict[str, float]:
    """The measurements the gate decides on, for an RGB uint8 image and its FoV (same coordinates).

    Images larger than ``WORK_SIDE`` are downscaled first (the pipeline passes its own small copy).
    """
    small = downscale(rgb, WORK_SIDE)
    height, width = small.shape[:2]
    inner = _shrunk(fov, RIM_FRACTION).mask(width, height).astype(np.uint8)
    if cv2.countNonZero(inner) < 64:  # a degenerate FoV: measure the whole frame
        inner[:] = 1
    luma = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    luma_mean, luma_std = (float(v.item()) for v in cv2.meanStdDev(luma, mask=inner))
    red, green, blue, _ = cv2.mean(small, mask=inner)
    total = red + green + blue or 1.0
    white = cv2.countNonZero(cv2.compare(luma, _WHITE_LUMA, cv2.CMP_GE) & inner)
    r, g, b = small[:, :, 0], small[:, :, 1], small[:, :, 2]
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)  # never negative
    # Detail is measured away from the FoV edge, on green (vessels have most contrast there).
    green_channel = np.ascontiguousarray(small[:, :, 1])
    detail = cv2.erode(inner, _DETAIL_ERODE)
    if cv2.countNonZero(detail) < 64:
        detail = inner
    # Fine structure: small bright plus small dark details (white + black top-hat). A retina is
    # smooth apart from its vessels, a photograph of the world is textured, a blurred photo has none.
    top_hat = cv2.morphologyEx(green_channel, cv2.MORPH_TOPHAT, _TEXTURE_KERNEL)
    black_hat = cv2.morphologyEx(green_channel, cv2.MORPH_BLACKHAT, _TEXTURE_KERNEL)
    texture = cv2.mean(top_hat, mask=detail)[0] + cv2.mean(black_hat, mask=detail)[0]
    return {
        "fov_found": float(fov.found),
        "coverage": float(fov.coverage),
        "brightness": luma_mean,
        "contrast": luma_std,
        "red_share": red / total,
        "blue_share": blue / total,
        "chroma": cv2.mean(chroma, mask=inner)[0],  # mean max-min channel: 0 for a grey picture
        "white_fraction": white / cv2.countNonZero(inner),
        "texture": texture,
        # Fine structure relative to the green level, so that dim but sharp photos are sharp.
        "sharpness": 100.0 * texture / max(cv2.mean(green_channel, mask=detail)[0], 1.0),
    }


def _shrunk(fov: FieldOfView, fraction: float) -> FieldOfView:
    if not fov.found:
        return fov
    return replace(fov, radii=(fov.radii[0] * (1 - fraction), fov.radii[1] * (1 - fraction)))


def assess_quality(rgb: np.ndarray, fov: FieldOfView) -> Quality:
    """Gate an RGB uint8 image with its field of view (in the same coordinates)."""
    m = quality_metrics(rgb, fov)
    t = THRESHOLDS
    if m["coverage"] < t["min_coverage"] or m["contrast"] < t["min_contrast"]:
        reason = "no_field_of_view"
    elif (
        m["chroma"] < t["min_chroma"]
        or m["red_share"] < t["min_red_share"]
        or m["blue_share"] > t["max_blue_share"]
        or (not fov.found and m["texture"] > t["max_texture_without_border"])
    ):
        reason = "not_fundus"
    elif m["brightness"] < t["min_brightness"]:
        reason = "too_dark"
    elif m["white_fraction"] > t["max_white_fraction"]:
        reason = "overexposed"
    elif m["sharpness"] < t["min_sharpness"]:
        reason = "too_blurry"
    else:
        reason = None
    return Quality(reason is None, reason, m)
