"""The one preprocessing pipeline: decode -> field-of-view crop -> resize -> normalise (+ quality).

Runtime, calibration, training caches and parity checks all go through :class:`Preprocessor`, so a
model sees the same pixels everywhere.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

# A module import (not a from-import): edge_retina.quality imports preprocess.fov, so whichever of
# the two is imported first finds the other one half-initialised.
import edge_retina.quality as quality_gate
from edge_retina.preprocess.decode import (
    MAX_PIXELS,
    MIN_SIDE,
    DecodedImage,
    ImageSource,
    decode_image,
)
from edge_retina.preprocess.dicom import DicomAttributes
from edge_retina.preprocess.fov import (
    FieldOfView,
    crop_to_fov,
    downscale,
    find_field_of_view,
)
from edge_retina.preprocess.raw import RawFrame
from edge_retina.preprocess.resize import normalise, resize_to_spec
from edge_retina.preprocess.spec import InputSpec

#: The reduced JPEG decode assumes the field of view spans at least this fraction of the shorter
#: side (it is ~0.8-1.0 on fundus cameras, above 1 when the sensor clips the disc). When the FoV
#: found is smaller than that, the image is decoded again at the resolution it needs.
ASSUMED_FOV_FRACTION = 0.8

#: Revision of the pixels ``prepare`` produces for a given spec. Caches of prepared images (training,
#: calibration, distillation) key on it together with the spec's hash: bump it whenever a change here,
#: in decode, fov or resize alters the output, so no cache silently serves stale pixels.
PREPROCESSING_VERSION = 1


def pixels_key(spec: InputSpec) -> str:
    """Identifies the pixels ``Preprocessor(spec).prepare`` produces: the key for caches of them."""
    return f"{spec.sha256()[:16]}-p{PREPROCESSING_VERSION}"


def _decode(source: ImageSource | RawFrame, name: str | None, **limits: int) -> DecodedImage:
    """A raw camera frame decodes itself (like a JPEG of it); everything else goes through decode_image."""
    if isinstance(source, RawFrame):
        return source.decode(name=name, **limits)
    return decode_image(source, name=name, **limits)


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the model, plus what was learnt on the way."""

    tensor: np.ndarray  # float32 (1, 3, H, W), normalised
    image: np.ndarray  # uint8 (H, W, 3) RGB after FoV crop and resize, before normalisation
    fov: FieldOfView  # in the coordinates of the original (source_size)
    quality: quality_gate.Quality
    source_size: tuple[int, int]  # (width, height) of the original, as displayed
    timings: dict[str, float]  # seconds: {"decode": ..., "preprocess": ...}
    dicom: DicomAttributes | None = None  # eye and identifiers, for a DICOM source


class Preprocessor:
    """Turns image files, bytes or arrays into model tensors the way ``spec`` says."""

    def __init__(self, spec: InputSpec, *, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE):
        self.spec = spec
        self.max_pixels = max_pixels
        self.min_side = min_side
        # Every crop+resize mode needs at most max(H, W) source pixels across the FoV.
        self._needed_fov_side = max(spec.size)

    def prepare(self, source: ImageSource | RawFrame, *, name: str | None = None) -> PreparedImage:
        """Decode and prepare one image. Raises ``ImageError`` if it cannot be decoded, its message
        naming the image ``name`` (default: its path, or "<bytes>", "<array>"...)."""
        start = time.perf_counter()
        decoded = _decode(
            source,
            name,
            min_short_side=math.ceil(self._needed_fov_side / ASSUMED_FOV_FRACTION),
            max_pixels=self.max_pixels,
            min_side=self.min_side,
        )
        rgb = decoded.rgb
        decode_seconds = time.perf_counter() - start

        # FoV detection and the quality gate share one small copy of the image.
        small = downscale(rgb)
        small_fov = find_field_of_view(small)
        fov = small_fov.scaled(rgb.shape[1], rgb.shape[0])
        fov_side = 2 * min(fov.radii)
        if fov.found and decoded.reduction > 1 and fov_side < self._needed_fov_side:
            # The FoV is smaller than the reduced decode assumed: decode again with enough pixels.
            redecode_start = time.perf_counter()
            short = min(rgb.shape[:2])
            decoded = _decode(
                source,
                name,
                min_short_side=math.ceil(self._needed_fov_side * short / fov_side),
                max_pixels=self.max_pixels,
                min_side=self.min_side,
            )
            rgb = decoded.rgb
            fov = fov.scaled(rgb.shape[1], rgb.shape[0])
            decode_seconds += time.perf_counter() - redecode_start

        cropped = crop_to_fov(rgb, fov) if self.spec.fov_crop else rgb
        image = resize_to_spec(cropped, self.spec)
        quality = quality_gate.assess_quality(small, small_fov)
        tensor = normalise(image, self.spec)
        preprocess_seconds = time.perf_counter() - start - decode_seconds

        source_size = (decoded.header.width, decoded.header.height)
        return PreparedImage(
            tensor=tensor,
            image=image,
            fov=fov.scaled(*source_size),
            quality=quality,
            source_size=source_size,
            timings={"decode": decode_seconds, "preprocess": preprocess_seconds},
            dicom=decoded.dicom,
        )

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """Normalise cached RGB uint8 images, ``(H, W, 3)`` or ``(N, H, W, 3)``, to NCHW float32."""
        return normalise(image, self.spec)

