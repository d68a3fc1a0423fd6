"""Raw camera frames: 8-bit RGB, BGR or grey rows, or an 8-bit Bayer mosaic, as a decodable source.

A fundus camera holds its frame uncompressed before it encodes a JPEG; handing that frame over saves
the encode on the camera and the decode here (docs/PROTOCOL.md, protocol 1.1). A frame is ``height``
rows of ``stride`` bytes each, the first ``width * bytes per pixel`` of which are pixels (the rest is
the row padding many sensors' DMA buffers have). Bayer mosaics are demosaiced by OpenCV (bilinear).

:meth:`RawFrame.decode` behaves like the decode of a JPEG of the same frame: the same pixel limits,
checked before any pixel is touched, and the same reduction: the factor libjpeg's DCT scaling would
use, computed as libjpeg computes it. Its reduced inverse DCTs output the mean of each 2x2, 4x4 or
8x8 block of the full-size decode (IJG's jidctred.c derives them that way), so a raw frame and the
JPEG made from it give the same pixels up to rounding (tests/test_bridge_raw.py) and the
field-of-view fit runs on the same small image.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge_retina.errors import ImageError
from edge_retina.preprocess.decode import (
    MAX_PIXELS,
    MIN_SIDE,
    DecodedImage,
    ImageHeader,
    _check_size,
    choose_reduction,
)

#: Pixel format -> (bytes per pixel, OpenCV conversion to RGB, or None when the pixels are RGB already).
#: Bayer names give the colours of the top-left 2x2 block, row by row (OpenCV's ``Bayer<XXXX>2RGB``
#: constants use the same convention).
PIXEL_FORMATS: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "gray8": (1, cv2.COLOR_GRAY2RGB),
    "bayer_rggb8": (1, cv2.COLOR_BayerRGGB2RGB),
    "bayer_bggr8": (1, cv2.COLOR_BayerBGGR2RGB),
    "bayer_grbg8": (1, cv2.COLOR_BayerGRBG2RGB),
    "bayer_gbrg8": (1, cv2.COLOR_BayerGBRG2RGB),
}

NAME = "<raw frame>"


def frame_size(pixel_format: str, width: int, height: int, stride: int | None = None) -> tuple[int, int]:
    """(stride, total bytes) of a frame; ``stride`` None means rows without padding.

    Raises ``ValueError`` for an unknown format or a stride shorter than a row of pixels.
    """
    if pixel_format not in PIXEL_FORMATS:
        raise ValueError(f"pixel_format must be one of {list(PIXEL_FORMATS)}, got {pixel_format!r}")
    row = width * PIXEL_FORMATS[pixel_format][0]
    stride = row if stride is None else stride
    if stride < row:
        raise ValueError(f"stride {stride} is shorter than a row of {width} {pixel_format} pixels ({row} bytes)")
    return stride, stride * height


@dataclass(frozen=True)
class RawFrame:
    """``height`` rows of ``stride`` bytes (None: no padding) of ``pixel_format`` pixels."""

    data: bytes | memoryview
    pixel_format: str
    width: int
    height: int
    stride: int | None = None

    def rgb(self, name: str = NAME) -> np.ndarray:
        """The whole frame as (H, W, 3) RGB uint8 (a view of ``data`` for rgb8). ``ImageError`` (its
        message naming the frame ``name``) when ``data`` does not fit the layout."""
        try:
            stride, size = frame_size(self.pixel_format, self.width, self.height, self.stride)
        except ValueError as exc:
            raise ImageError("unsupported", f"{name}: {exc}") from None
        if len(self.data) != size:
            raise ImageError("corrupt", f"{name}: {self.height} rows of {stride} bytes need {size} bytes, "
                                        f"got {len(self.data)}")
        channels, conversion = PIXEL_FORMATS[self.pixel_format]
        rows = np.frombuffer(self.data, np.uint8).reshape(self.height, stride)[:, : self.width * channels]
        pixels = rows.reshape(self.height, self.width, channels) if channels > 1 else rows
        # Padded rows stay a strided view: OpenCV reads it as is, no copy of the frame is made here.
        return pixels if conversion is None else cv2.cvtColor(pixels, conversion)

    def decode(
        self,
        *,
        min_short_side: int = 0,
        max_pixels: int = MAX_PIXELS,
        min_side: int = MIN_SIDE,
        name: str | None = None,
    ) -> DecodedImage:
        """Like ``decode_image`` of a JPEG of this frame (see the module docstring)."""
        name = name or NAME
        header = ImageHeader("raw", self.width, self.height, self.pixel_format)
        _check_size(header, name, max_pixels, min_side)
        rgb = self.rgb(name)
        reduction = choose_reduction(self.width, self.height, min_short_side) if min_short_side > 0 else 1
        if reduction > 1:
            rgb = block_means(rgb, reduction)
        return DecodedImage(np.ascontiguousarray(rgb), header, reduction, name)


def block_means(rgb: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each ``factor`` x ``factor`` block, as a JPEG decode at 1/``factor`` scale gives it.

    The blocks sit on the same grid as the JPEG's: an edge block that the image only partly covers
    is filled by repeating the last row or column (what JPEG encoders pad it with) and gives one
    more output pixel, so the output is ceil(w / factor) x ceil(h / factor). An area resize to that
    size instead would stretch the grid whenever a side is not a multiple of ``factor`` (half a
    pixel by the far edge): on HEI-MED's 2196x1958 camera photos that tripled the difference from
    the JPEG's pixels.
    """
    height, width = rgb.shape[:2]
    # Padding the whole frame (copyMakeBorder, then one resize) gives the same pixels, but copies the
    # frame: 3.9 against 3.2 ms for a 3 MP frame at 1/8 here. Only the partial edge blocks are padded.
    whole_h, whole_w = height - height % factor, width - width % factor
    # An integer-factor area resize is exactly the block mean (OpenCV's fast path for it).
    means = cv2.resize(rgb[:whole_h, :whole_w], (whole_w // factor, whole_h // factor), interpolation=cv2.INTER_AREA)
    if whole_w < width:
        edge = cv2.copyMakeBorder(rgb[:whole_h, whole_w:], 0, 0, 0, factor - (width - whole_w), cv2.BORDER_REPLICATE)
        means = np.hstack([means, cv2.resize(edge, (1, whole_h // factor), interpolation=cv2.INTER_AREA)])
    if whole_h < height:
        edge = cv2.copyMakeBorder(rgb[whole_h:], 0, factor - (height - whole_h), 0, -width % factor,
                                  cv2.BORDER_REPLICATE)
        means = np.vstack([means, cv2.resize(edge, (means.shape[1], 1), interpolation=cv2.INTER_AREA)])
    return means
