"""Find the field of view (FoV) of a fundus photograph and crop to it.

A fundus camera images the retina as a bright disc on a black background, often clipped at the top
and bottom by the sensor. Detection runs on a copy downscaled to ``WORK_SIDE`` px:

1. brightness = the max over the colour channels (robust to red-free and green-tinted photos);
   pure white counts as background (some public sets pad photos with white);
2. threshold relative to the image's own statistics: a little above the background level (a low
   percentile), by a fraction of the range up to the bright level (a high percentile);
3. keep the largest connected bright region, take its outer contour, drop the points along the
   image border (where the sensor clipped the disc) and fit an axis-aligned ellipse to the rest by
   least squares, refitting without the points fitted worst (the notch some cameras cut into the
   disc, glare on the rim, straight cuts). An ellipse rather than a circle because public datasets
   often resized photos without keeping the aspect ratio.

The fit is accepted as a FoV border only when it is a good ellipse of plausible size, spans enough
of its circumference inside the image, and what lies outside it is black. Otherwise the photograph
is treated as an existing crop (RIM-ONE optic-disc crops, whose bright disc on darker retina is the
trap the "outside is black" test exists for; EyePACS photos cut to an octagon around the disc) and
the "crop" is the whole image. The crop box is the rectangle around the ellipse, which may extend
beyond a clipped image: that part is padded with black, so the disc has the same size and place in
the model input whether or not the sensor clipped it.

Constants were set on the 4.9k photographs in ../shared/datasets (HEI-MED, RIM-ONE, eye4class) by
looking at the crops: with them, 176 of the 177 HEI-MED photos, 4,043 of the 4,217 eye4class
photos and none of the 485 RIM-ONE crops get a border; of the 175 photos without one, most are
octagon-cut EyePACS photos (whole image = FoV box, as intended) and about 10 are photos on white
or with a white-out halo or unusual borders (passed through whole). Of the borders found, about 1 in 500 looked off by
more than a few percent of the radius (underexposed photos whose rim fades into the background).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

#: Longer side, in px, of the downscaled copy detection runs on.
WORK_SIDE = 256
# Threshold = background + max(_MIN_STEP, _STEP_FRACTION * (bright - background)), in 0..255 units
# of the brightest channel; background is the 2nd percentile, "bright" the 90th. Lower steps keep
# the dim rims of underexposed photos inside the FoV; JPEG noise in black borders stays below them.
_BACKGROUND_PERCENTILE = 2
_BRIGHT_PERCENTILE = 90
_STEP_FRACTION = 0.08
_MIN_STEP = 6
# Pixels whose channels are all at least this bright are treated as a white background.
_WHITE_LEVEL = 250
# Contour points closer than this fraction of the image side to its border are ignored.
_BORDER_MARGIN = 0.02
# Robust refits of the ellipse after dropping badly fitting contour points.
_REFITS = 2
# A border is accepted when the fitted contour points span at least this fraction of the ellipse's
# circumference and their RMS radial distance to it is below _MAX_FIT_RMS (of the radius; the
# datasets' median is 0.002, RIM-ONE's false "discs" are mostly above 0.03),
_MIN_ARC_FRACTION = 0.15
_MAX_FIT_RMS = 0.06
# the radii are neither tiny nor far larger than the image (as fractions of the image's side along
# the same axis), the aspect ratio is plausible,
_MIN_RADIUS_FRACTION = 0.2
_MAX_RADIUS_FRACTION = 0.9
_MAX_ASPECT = 2.0
# and what lies outside the ellipse (beyond a margin, as a fraction of the radius; at least
# _MIN_OUTSIDE_FRACTION of the image) is black: its 95th-percentile brightness is at most
# _MAX_OUTSIDE_LEVEL and _MAX_OUTSIDE_RATIO of the median inside. Real borders: 0-2 (99th
# percentile of photos: 17); the retina around RIM-ONE's optic discs: 24-241, median 150.
_OUTSIDE_MARGIN = 0.08
_MIN_OUTSIDE_FRACTION = 0.003
_MAX_OUTSIDE_LEVEL = 35
_MAX_OUTSIDE_RATIO = 0.35


@dataclass(frozen=True)
class FieldOfView:
    """The field of view, an axis-aligned ellipse in the pixel coordinates of ``image_size``.

    A fundus camera's FoV is a circle; it becomes an ellipse when a dataset resized a photo without
    keeping its aspect ratio (common in public sets), hence two radii. ``box`` is
    ``(x0, y0, x1, y1)`` (x1, y1 exclusive) around the ellipse; it can extend beyond the image when
    the sensor clipped the disc. ``coverage`` is the fraction of the image's pixels inside the FoV.
    Without a border (``found`` False) the ellipse is the one through the image's corners and the
    box is the whole image.
    """

    found: bool
    centre: tuple[float, float]  # (x, y)
    radii: tuple[float, float]  # semi-axes along x and y
    box: tuple[int, int, int, int]
    coverage: float
    image_size: tuple[int, int]  # (width, height)

    @property
    def radius(self) -> float:
        """Mean radius (the radius, for a circular FoV)."""
        return (self.radii[0] + self.radii[1]) / 2

    def scaled(self, width: int, height: int) -> "FieldOfView":
        """The same field of view in the coordinates of the image resized to ``width`` x ``height``."""
        sx, sy = width / self.image_size[0], height / self.image_size[1]
        x0, y0, x1, y1 = self.box
        return replace(
            self,
            centre=(self.centre[0] * sx, self.centre[1] * sy),
            radii=(self.radii[0] * sx, self.radii[1] * sy),
            box=(round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)),
            image_size=(width, height),
        )

    def mask(self, width: int, height: int) -> np.ndarray:
        """Boolean (height, width) mask of the FoV for the image resized to that size."""
        if not self.found:
            return np.ones((height, width), bool)
        fov = self.scaled(width, height)
        return _normalised_distance(fov.centre, fov.radii, width, height) <= 1.0


def _normalised_distance(centre, radii, width: int, height: int) -> np.ndarray:
    """Per pixel (centre), the ellipse "radius" it lies on: < 1 inside, > 1 outside."""
    ys, xs = np.ogrid[:height, :width]
    dx = (xs + 0.5 - centre[0]) / radii[0]
    dy = (ys + 0.5 - centre[1]) / radii[1]
    return np.sqrt(dx * dx + dy * dy)


def whole_image(width: int, height: int, coverage: float = 1.0) -> FieldOfView:
    """The "no border found" field of view: the whole image."""
    return FieldOfView(
        found=False,
        centre=(width / 2, height / 2),
        radii=(width / np.sqrt(2), height / np.sqrt(2)),
        box=(0, 0, width, height),
        coverage=coverage,
        image_size=(width, height),
    )


def downscale(rgb: np.ndarray, longer_side: int = WORK_SIDE) -> np.ndarray:
    """``rgb`` shrunk so its longer side is at most ``longer_side`` (as-is when already smaller).

    Halves with a Gaussian pyramid while the image is at least twice too large, then finishes
    with bilinear interpolation (at most 2x: no aliasing). ~0.3 ms where INTER_AREA to an arbitrary
    size costs ~1 ms, a large share of the budget after a reduced JPEG decode.
    """
    while max(rgb.shape[:2]) >= 2 * longer_side:
        rgb = cv2.pyrDown(rgb)
    height, width = rgb.shape[:2]
    scale = longer_side / max(height, width)
    if scale >= 1.0:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)


def find_field_of_view(rgb: np.ndarray) -> FieldOfView:
    """Locate the FoV of an RGB uint8 image (see the module docstring for the method).

    Images larger than ``WORK_SIDE`` are downscaled first; callers that already hold a
    ``downscale``d copy pass that and ``scaled()`` the result back.
    """
    height, width = rgb.shape[:2]
    small = downscale(rgb)
    brightness = _brightness(small)
    region = _bright_region(brightness)
    if region is None:
        return whole_image(width, height, 0.0)
    coverage = cv2.countNonZero(region) / region.size
    candidate = _border_candidate(region, brightness)
    if candidate is None or not _is_border(candidate):
        return whole_image(width, height, coverage)
    sh, sw = small.shape[:2]
    sx, sy = width / sw, height / sh
    cx, cy = candidate["cx"] * sx, candidate["cy"] * sy
    rx, ry = candidate["rx"] * sx, candidate["ry"] * sy
    box = (round(cx - rx), round(cy - ry), round(cx + rx), round(cy + ry))
    return FieldOfView(True, (cx, cy), (rx, ry), box, coverage, (width, height))


def _brightness(small: np.ndarray) -> np.ndarray:
    """The brightest channel, with pure white as background (some public sets pad with white)."""
    # Two elementwise maxima: numpy's max over a length-3 last axis is ~20x slower.
    brightness = np.maximum(np.maximum(small[:, :, 0], small[:, :, 1]), small[:, :, 2])
    white = np.minimum(np.minimum(small[:, :, 0], small[:, :, 1]), small[:, :, 2]) >= _WHITE_LEVEL
    brightness[white] = 0
    return brightness


def _is_border(c: dict[str, float]) -> bool:
    return (
        c["arc_fraction"] >= _MIN_ARC_FRACTION
        and c["fit_rms"] <= _MAX_FIT_RMS
        and _MIN_RADIUS_FRACTION <= c["rx_fraction"] <= _MAX_RADIUS_FRACTION
        and _MIN_RADIUS_FRACTION <= c["ry_fraction"] <= _MAX_RADIUS_FRACTION
        and 1 / _MAX_ASPECT <= c["rx"] / c["ry"] <= _MAX_ASPECT
        and c["outside_fraction"] >= _MIN_OUTSIDE_FRACTION
        and c["outside_level"] <= _MAX_OUTSIDE_LEVEL
        and c["outside_level"] <= _MAX_OUTSIDE_RATIO * c["inside_level"]
    )


def _border_candidate(region: np.ndarray, brightness: np.ndarray) -> dict[str, float] | None:
    """Fit an ellipse to the outer edge of ``region`` and measure the fit (``_is_border`` judges).

    Returns None when the edge lies along the image border or no ellipse fits at all.
    """
    h, w = region.shape
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = max(contours, key=len).reshape(-1, 2).astype(np.float64) + 0.5  # pixel centres
    # Where the disc is clipped, the contour runs along (or a few px inside) the image border.
    margin = max(3.0, _BORDER_MARGIN * max(h, w))
    away = (points[:, 0] > margin) & (points[:, 0] < w - margin)
    away &= (points[:, 1] > margin) & (points[:, 1] < h - margin)
    points = points[away]
    if len(points) < 16:
        return None
    ellipse = _least_squares_ellipse(points)
    for _ in range(_REFITS):
        if ellipse is None:
            return None
        # Drop the points the last fit explains worst (notches, glare on the rim, straight cuts).
        residual = np.abs(_radial_residual(points, *ellipse))
        kept = points[residual <= max(3 * float(np.median(residual)), 0.01)]
        if len(kept) < 16:
            break
        points, ellipse = kept, _least_squares_ellipse(kept)
    if ellipse is None:
        return None
    cx, cy, rx, ry = ellipse
    angles = np.arctan2((points[:, 1] - cy) / ry, (points[:, 0] - cx) / rx)
    occupied = np.unique(np.floor((angles + np.pi) / (2 * np.pi) * 72).astype(int) % 72)
    distance = _normalised_distance((cx, cy), (rx, ry), w, h)
    outside = distance > 1 + _OUTSIDE_MARGIN
    inner = distance < 1 - _OUTSIDE_MARGIN
    outside_count = int(np.count_nonzero(outside))
    return {
        "cx": cx,
        "cy": cy,
        "rx": rx,
        "ry": ry,
        "arc_fraction": len(occupied) / 72,
        "fit_rms": float(np.sqrt(np.mean(_radial_residual(points, *ellipse) ** 2))),
        "rx_fraction": rx / w,
        "ry_fraction": ry / h,
        "outside_fraction": outside_count / outside.size,
        "outside_level": float(np.percentile(brightness[outside], 95)) if outside_count else 255.0,
        "inside_level": float(np.median(brightness[inner])) if inner.any() else 0.0,
    }


def _bright_region(brightness: np.ndarray) -> np.ndarray | None:
    """The largest connected region above the relative threshold, as a uint8 0/1 mask (None: none)."""
    background, bright = np.percentile(brightness, (_BACKGROUND_PERCENTILE, _BRIGHT_PERCENTILE))
    threshold = background + max(_MIN_STEP, _STEP_FRACTION * (bright - background))
    mask = (brightness > threshold).astype(np.uint8)
    # Opening drops JPEG speckle and thin text burnt into the border before labelling.
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return (labels == largest).view(np.uint8)


def _least_squares_ellipse(points: np.ndarray) -> tuple[float, float, float, float] | None:
    """Axis-aligned algebraic ellipse fit: x^2 + C y^2 + D x + E y + F = 0 by least squares.

    Hand-written because cv2.fitEllipse fits a rotated ellipse (two more degrees of freedom that
    short clipped arcs cannot pin down); FoV ellipses come from axis-aligned resizing.
    Returns (cx, cy, rx, ry) or None for a degenerate fit.
    """
    x, y = points[:, 0], points[:, 1]
    design = np.column_stack([y * y, x, y, np.ones_like(x)])
    (c, d, e, f), *_ = np.linalg.lstsq(design, -(x * x), rcond=None)
    if c <= 0:
        return None
    cx, cy = -d / 2, -e / (2 * c)
    rx2 = cx * cx + c * cy * cy - f
    if rx2 <= 0:
        return None
    return float(cx), float(cy), float(np.sqrt(rx2)), float(np.sqrt(rx2 / c))


def _radial_residual(points: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return np.hypot((points[:, 0] - cx) / rx, (points[:, 1] - cy) / ry) - 1.0


def crop_to_fov(rgb: np.ndarray, fov: FieldOfView) -> np.ndarray:
    """Crop ``rgb`` (in ``fov``'s coordinates) to ``fov.box``, padding outside the image with black."""
    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = fov.box
    if (x0, y0, x1, y1) == (0, 0, width, height):
        return rgb
    inner = rgb[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    pads = (max(-y0, 0), max(y1 - height, 0), max(-x0, 0), max(x1 - width, 0))
    if not any(pads):
        return inner
    return cv2.copyMakeBorder(inner, *pads, cv2.BORDER_CONSTANT, value=(0, 0, 0))
