"""Reading, probing and decoding input images into RGB uint8 arrays.

Every path through here either returns an ``(H, W, 3)`` RGB ``uint8`` array or raises
:class:`~edge_retina.errors.ImageError` with a stable code and a message naming the input.

Policy decisions (documented here because the CLI and the README point at them):

- **Pixel limits.** The header is probed with Pillow (its lazy ``Image.open`` reads only the
  header) before anything is decoded: images above ``MAX_PIXELS`` are refused as ``too_large``
  (decompression-bomb guard) and images with a side below ``MIN_SIDE`` as ``too_small``, before
  anything else (the orientation) is read. Pillow's own bomb warning is filtered out (see
  ``_quiet_pillow``); Pillow's hard bomb error (above ``2 * PIL.Image.MAX_IMAGE_PIXELS``,
  about 179 MP) is reported as ``too_large`` as well, so a ``max_pixels`` above that is capped there.
- **EXIF orientation is honoured**, for every format, the way every image viewer shows the photo
  (fundus cameras do not write a rotation, so for them this changes nothing; a phone photo of a
  screen or of an adapter-based camera is shown the way the person who took it saw it). It is
  applied by us from the probed tag, after decoding without it, so reduced
  and full decodes, and all formats, behave the same. ``ImageHeader.width/height`` are the
  displayed (oriented) size. A PNG's tag is read from its metadata chunks without its pixels
  (``_png_exif``).
- **Reduced JPEG decoding.** When the caller says how many pixels it needs along the shorter side,
  JPEGs are decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling: the largest reduction whose
  shorter side still meets the need.
- **Conversions.** Greyscale becomes three equal channels; alpha is composited onto black (the
  background of a fundus photograph); 16-bit data is scaled to 8 bits by its real range: the bit
  depth its largest value needs (a 12-bit sensor in a 16-bit container maps 4095 to 255), which keeps
  the exposure (an underexposed photo stays dark for the quality gate) where a min/max stretch would
  hide it. Float and other sample types are ``unsupported``.
- **Damaged JPEGs.** JPEGs are decoded by libjpeg-turbo through simplejpeg with its strict mode,
  which turns libjpeg's warnings ("Corrupt JPEG data", "premature end of data segment") into errors:
  OpenCV and Pillow only log them and return an image that is partly grey or smeared, which would
  be scored as if it were fine. simplejpeg is a well-kept binding with self-contained wheels (no
  system libturbojpeg, unlike PyTurboJPEG); its output is bit-identical to OpenCV's libjpeg-turbo
  decode (same IDCT and upsampling) and as fast (BENCHMARKS.md "Reliability").
- **Truncation.** OpenCV can return a partly grey image for a truncated file, so before decoding
  we check the end-of-data markers: JPEG EOI after the first scan, PNG IEND, and the size a BMP
  declares in its header (truncated WebP and TIFF files already fail the header probe).
"""
from __future__ import annotations

import io
import os
import re
import stat
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from edge_retina.errors import ImageError
from edge_retina.preprocess import dicom

#: Largest accepted image, in pixels (width * height). 100 MP is above every fundus camera and
#: phone sensor in use (the largest common sensors are ~50 MP), and decoding it needs ~300 MB.
MAX_PIXELS = 100_000_000
#: Smallest accepted side, in pixels: below this there is no usable retinal detail.
MIN_SIDE = 64
#: Largest accepted file, in bytes, checked before the file is read (a huge or sparse file would
#: otherwise be read into memory whole): room for a MAX_PIXELS image stored uncompressed as 8-bit RGB
#: (300 MB, a BMP or TIFF), far above any camera JPEG or PNG.
MAX_FILE_BYTES = 320 * 1024 * 1024
#: File suffixes the CLI treats as images when it expands a folder (lower case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp") + dicom.DICOM_EXTENSIONS

#: Pillow format names we decode (through OpenCV). Anything else Pillow recognises is "unsupported".
DECODABLE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray]

_EXIF_ORIENTATION_TAG = 0x0112
_REDUCTIONS = (8, 4, 2)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the whole IEND chunk: length 0, type, CRC
# File signatures of DECODABLE_FORMATS (from each format's specification), to tell a damaged file
# from a non-image when Pillow cannot read its header.
_SIGNATURES = (
    ("JPEG", b"\xff\xd8\xff"),
    ("PNG", _PNG_SIGNATURE),
    ("BMP", b"BM"),
    ("TIFF", b"II*\x00"),
    ("TIFF", b"MM\x00*"),
    ("WEBP", b"RIFF"),  # followed by a 4-byte size and "WEBP"
)

#: Archives, by their first bytes: photos handed over zipped are named as such, not as "not an image".
_ARCHIVE_SIGNATURES = (
    ("ZIP", b"PK\x03\x04"),
    ("ZIP", b"PK\x05\x06"),  # an empty one
    ("gzip", b"\x1f\x8b"),
    ("bzip2", b"BZh"),
    ("xz", b"\xfd7zXZ\x00"),
    ("Zstandard", b"\x28\xb5\x2f\xfd"),
    ("7-Zip", b"7z\xbc\xaf\x27\x1c"),
    ("RAR", b"Rar!\x1a\x07"),
)
_TAR_MAGIC_AT, _TAR_MAGIC = 257, b"ustar"

#: The warnings Pillow gives while it reads a header for us, as (category, module regex); see
#: ``_quiet_pillow``.
_PILLOW_HEADER_WARNINGS = ((Image.DecompressionBombWarning, ""), (UserWarning, r"PIL\.\w+ImagePlugin$"))
_quiet_pillow_lock = threading.Lock()


def _quiet_pillow() -> None:
    """Make sure the process-wide warning filters drop the warnings Pillow gives reading a header.

    Process-wide filters rather than ``warnings.catch_warnings()`` around each ``Image.open``:
    catch_warnings swaps the process-wide filter list and puts it back on exit, so with the pipeline
    decoding on two threads one thread's exit switched the filter off while the other was inside
    (Pillow's bomb warning reached stderr). Checked on every call, not set once at import, because
    a ``catch_warnings`` block around the import (pytest's collection, an application's) drops
    filters added inside it; adding is locked because ``filterwarnings`` removes an entry before
    it puts it back in front, a gap another thread could fall into. Both filters are narrow:

    - ``DecompressionBombWarning`` (any image above ``Image.MAX_IMAGE_PIXELS``, ~89 MP): every header
      Pillow reads for us is checked against our own ``MAX_PIXELS`` right after, so the warning
      only repeats (or, below our limit, contradicts) that decision. Raising ``Image.MAX_IMAGE_PIXELS``
      to our limit instead would still warn for the images between it and Pillow's hard error (the
      ones we refuse), and would move that hard error for every Pillow user in the process.
    - ``UserWarning`` from Pillow's format plugins: remarks on damaged metadata ("Corrupt EXIF
      data", a malformed MPO or APNG) that they read past; damage that matters is an ImageError.
    """
    with _quiet_pillow_lock:
        for category, module in _PILLOW_HEADER_WARNINGS:
            # The filter as warnings.filters holds it: (action, message, category, module, lineno).
            if ("ignore", None, category, re.compile(module) if module else None, 0) not in warnings.filters:
                warnings.filterwarnings("ignore", category=category, module=module)


@dataclass(frozen=True)
class ImageHeader:
    """What the header says about an image, before any pixel is decoded."""

    format: str  # Pillow's format name ("JPEG", "PNG", ...) or "array" for numpy input
    width: int  # as displayed, i.e. after EXIF orientation
    height: int
    mode: str  # Pillow's mode ("RGB", "L", "I;16", "RGBA", ...) or the numpy dtype for arrays
    orientation: int = 1  # EXIF orientation tag, 1..8 (1: stored upright)

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class DecodedImage:
    """An RGB uint8 image plus where it came from."""

    rgb: np.ndarray  # (H, W, 3) uint8, RGB, oriented
    header: ImageHeader
    reduction: int  # 1 (full decode), 2, 4 or 8 (libjpeg DCT scaling)
    name: str  # how messages refer to the source (its path, or "<bytes>"/"<array>")
    dicom: dicom.DicomAttributes | None = None  # eye and identifiers, for a DICOM source


def describe_source(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, np.ndarray):
        return "<array>"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return f"<{type(source).__name__}>"


def read_source(source: ImageSource, name: str | None = None) -> tuple[bytes | np.ndarray, str]:
    """Return the encoded bytes (or the array) of ``source`` and its display name: ``name`` if given
    (what the caller calls bytes or an array: the photo's file name in an archive, a request id...),
    else ``describe_source``'s."""
    name = name or describe_source(source)
    if isinstance(source, np.ndarray):
        return source, name
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        data = _read_file(Path(source), name)
    else:
        raise ImageError(
            "not_an_image", f"{name}: an image source is a path, bytes or a numpy array, not {type(source).__name__}"
        )
    if not data:
        raise ImageError("empty_file", f"{name}: the file is empty (0 bytes)")
    return data, name


def broken_link(path: Path) -> str | None:
    """Where ``path`` points, said for people, when it is a link to a missing file (in a folder of links
    to an archive that has moved or is not mounted); None when it is not a link."""
    try:
        return f"a link to a missing file ({os.readlink(path)})"
    except OSError:
        return None


def _read_file(path: Path, name: str) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageError("not_found", f"{name}: {broken_link(path) or 'no such file'}") from None
    except PermissionError as exc:
        raise ImageError("unreadable", f"{name}: cannot access the file ({exc.strerror})") from None
    except OSError as exc:  # a symlink loop, a name too long...
        raise ImageError("not_found", f"{name}: cannot access the file ({exc.strerror})") from None
    except ValueError:  # os.stat refuses a path with a NUL byte: no file can have that name
        raise ImageError("not_found", f"{name!r}: no such file (the path contains a NUL byte)") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError("not_a_file", f"{name}: is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device would block or never end: refuse before opening it.
        raise ImageError("not_a_file", f"{name}: is not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise ImageError(
            "too_large", f"{name}: {st.st_size:,} bytes is above the file-size limit of {MAX_FILE_BYTES:,} (not read)"
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)  # bounded: the file may have grown since the check
    except OSError as exc:
        raise ImageError("unreadable", f"{name}: cannot read the file ({exc.strerror})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ImageError("too_large", f"{name}: larger than the file-size limit of {MAX_FILE_BYTES:,} bytes")
    return data


def probe_image(
    source: ImageSource, *, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE, name: str | None = None
) -> ImageHeader:
    """Read only the header of ``source`` and check it against the pixel limits.

    Raises ``ImageError`` for anything that is not a decodable image of acceptable size; its message
    names the source as ``name`` (default: ``describe_source``).
    """
    data, name = read_source(source, name)
    if dicom.is_dicom(data):
        return _dicom_header(dicom.read_photo(data, name), name, max_pixels, min_side)
    return _probe(data, name, max_pixels, min_side)


def _probe(data: bytes | np.ndarray, name: str, max_pixels: int, min_side: int) -> ImageHeader:
    if not isinstance(data, np.ndarray):
        return _encoded_header(data, name, max_pixels, min_side)
    header = _array_header(data, name)
    _check_size(header, name, max_pixels, min_side)
    return header


def _array_header(array: np.ndarray, name: str) -> ImageHeader:
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageError(
            "unsupported", f"{name}: expected an HxW, HxWx3 or HxWx4 array, got shape {array.shape}"
        )
    if array.dtype not in (np.uint8, np.uint16):
        raise ImageError("unsupported", f"{name}: expected uint8 or uint16 pixels, got {array.dtype}")
    return ImageHeader("array", int(array.shape[1]), int(array.shape[0]), str(array.dtype))


def _encoded_header(data: bytes, name: str, max_pixels: int, min_side: int) -> ImageHeader:
    """The header of an encoded image, its size checked before its orientation is read (reading
    metadata may read further into the file than the header)."""
    _quiet_pillow()
    try:
        im = Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS)
    except Image.DecompressionBombError:  # above Pillow's hard limit, so above ours: named as ours
        raise ImageError(
            "too_large",
            f"{name}: above the limit of {min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or 0)):,} pixels "
            "(refused before decoding: possible decompression bomb)",
        ) from None
    except UnidentifiedImageError:
        raise _not_decodable(data, name) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow raises these for a recognised signature with a broken header.
        raise ImageError("corrupt", f"{name}: unreadable image header ({exc})") from None
    with im:
        stored = ImageHeader(im.format or "?", im.width, im.height, im.mode)
        # Orientation does not change the pixel count or the shorter side: the limits hold as stored.
        _check_size(stored, name, max_pixels, min_side)
        orientation = _exif_orientation(im, data)
    width, height = stored.width, stored.height
    if orientation in (5, 6, 7, 8):  # these turn the image by 90 degrees
        width, height = height, width
    return ImageHeader(stored.format, width, height, stored.mode, orientation)


def _exif_orientation(im: Image.Image, data: bytes) -> int:
    try:
        exif = _png_exif(data) if im.format == "PNG" else im.getexif()
        value = exif.get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 -- a broken EXIF block must not make a readable photo fail
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _png_exif(data: bytes) -> Image.Exif:
    """A PNG's EXIF as Pillow's ``getexif`` gives it, without decoding the pixels.

    Without an eXIf chunk before the image data, ``PngImageFile.getexif`` (Pillow 13's source)
    decodes the whole image (``load()``) to reach the chunks after it, where an eXIf chunk or the text chunks Pillow also
    takes EXIF from (XMP, "Raw profile type exif") may be: a second decode of every PNG, and a
    full one of any PNG before our size limit could refuse it. So we give Pillow a PNG of the same
    metadata chunks, in the order its full read would meet them, without the image data, and read
    EXIF the way ``Image.getexif`` does from that header alone.
    """
    with Image.open(io.BytesIO(_png_metadata(data)), formats=("PNG",)) as header_only:
        # The base-class method: PngImageFile.getexif would try to load() the (absent) pixels first.
        return Image.Image.getexif(header_only)


def _png_metadata(data: bytes) -> bytes:
    """``data`` (a PNG) with only the chunks a full Pillow read parses for metadata.

    Those are the chunks before the image data, and, when there is no eXIf chunk among them, also
    the ones after it up to IEND or the next APNG frame (``PngImageFile.load_end``). The CRCs are
    computed afresh, as ``load_end`` does not check them. Hand-written: Pillow has no way to read
    the chunks after the image data without decoding it; the chunk layout is a length, a type, the
    data and a CRC (PNG specification, section 5.3).
    """
    before: list[bytes] = []
    after: list[bytes] = []
    chunks = before
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        head = data[pos : pos + 8]
        (length,), kind = struct.unpack(">I", head[:4]), head[4:]
        start, pos = pos + 8, pos + 12 + length
        if kind == b"IEND" or (kind == b"fcTL" and chunks is after):
            break
        if kind in (b"IDAT", b"fdAT"):  # the bulk of the file: skipped without being copied
            chunks = after
        else:
            body = data[start : start + length]
            chunks.append(head + body + struct.pack(">I", zlib.crc32(kind + body)))
    if any(chunk[4:8] == b"eXIf" for chunk in before):
        after = []
    return _PNG_SIGNATURE + b"".join(before + after) + _PNG_IEND


def _not_decodable(data: bytes, name: str) -> ImageError:
    """Tell a damaged image, an image format we do not decode and something that is no image apart.

    Pillow reports all three as "cannot identify image file".
    """
    for fmt, signature in _SIGNATURES:
        if data.startswith(signature) and (fmt != "WEBP" or data[8:12] == b"WEBP"):
            return ImageError(
                "corrupt", f"{name}: damaged {fmt} file (its header cannot be read; or an exotic pixel layout)"
            )
    _quiet_pillow()
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
    except Exception:  # noqa: BLE001 -- any failure here means "not an image we know"
        fmt = None
    if fmt:
        return ImageError(
            "unsupported", f"{name}: {fmt} images are not supported (use {', '.join(DECODABLE_FORMATS)})"
        )
    archive = next((kind for kind, signature in _ARCHIVE_SIGNATURES if data.startswith(signature)), None)
    if archive is None and data[_TAR_MAGIC_AT : _TAR_MAGIC_AT + len(_TAR_MAGIC)] == _TAR_MAGIC:
        archive = "tar"
    if archive:  # neither `screen` nor `archive screen` (folders, lists of paths) reads inside archives
        return ImageError("not_an_image", f"{name}: a {archive} archive, not an image file (extract it and screen "
                                          "the folder)")
    return ImageError("not_an_image", f"{name}: not an image file (no known image signature)")


def _check_size(header: ImageHeader, name: str, max_pixels: int, min_side: int) -> None:
    if header.pixels > max_pixels:
        raise ImageError(
            "too_large",
            f"{name}: {header.width}x{header.height} = {header.pixels:,} pixels is above the limit of "
            f"{max_pixels:,} (refused before decoding: possible decompression bomb)",
        )
    if min(header.width, header.height) < min_side:
        raise ImageError(
            "too_small",
            f"{name}: {header.width}x{header.height} is too small (each side must be at least {min_side} px)",
        )


def choose_reduction(width: int, height: int, min_short_side: int) -> int:
    """Largest libjpeg DCT reduction (8, 4, 2, else 1) keeping the shorter side >= ``min_short_side``."""
    short = min(width, height)
    for factor in _REDUCTIONS:
        if -(-short // factor) >= min_short_side:  # libjpeg rounds scaled sizes up
            return factor
    return 1


def decode_image(
    source: ImageSource,
    *,
    min_short_side: int = 0,
    max_pixels: int = MAX_PIXELS,
    min_side: int = MIN_SIDE,
    name: str | None = None,
) -> DecodedImage:
    """Decode ``source`` to an oriented RGB uint8 image.

    ``min_short_side`` > 0 allows a reduced-resolution JPEG decode whose shorter side is at least
    that many pixels (0: always decode at full size). Messages name the source as ``name``
    (default: ``describe_source``).
    """
    data, name = read_source(source, name)
    data, attributes = _unwrap_dicom(data, name, max_pixels, min_side)
    header = _probe(data, name, max_pixels, min_side)
    if isinstance(data, np.ndarray):
        return DecodedImage(_array_to_rgb(data, name, from_bgr=False), header, 1, name, attributes)
    reduction = 1
    if header.format == "JPEG":
        _check_jpeg_complete(data, name)
        if min_short_side > 0:
            reduction = choose_reduction(header.width, header.height, min_short_side)
        pixels = _decode_jpeg(data, name, reduction)
    else:
        _check_complete(data, header.format, name)
        pixels = _imdecode(data, name, cv2.IMREAD_UNCHANGED)
    rgb = _array_to_rgb(pixels, name, from_bgr=header.format != "JPEG")
    return DecodedImage(_orient(rgb, header.orientation), header, reduction, name, attributes)


def _unwrap_dicom(
    data: bytes | np.ndarray, name: str, max_pixels: int, min_side: int
) -> tuple[bytes | np.ndarray, dicom.DicomAttributes | None]:
    """The photograph inside a DICOM file (see preprocess/dicom.py), its size checked from the DICOM
    header before any pixel is decoded; other sources pass through."""
    if not dicom.is_dicom(data):
        return data, None
    photo = dicom.read_photo(data, name)
    _dicom_header(photo, name, max_pixels, min_side)
    return photo.pixels(), photo.attributes


def _decode_jpeg(data: bytes, name: str, reduction: int) -> np.ndarray:
    """RGB pixels at 1/``reduction`` scale, stored orientation; ``corrupt`` on any libjpeg warning."""
    try:
        height, width = simplejpeg.decode_jpeg_header(data)[:2]
        # The minimum sizes make libjpeg pick exactly 1/reduction among its M/8 scales (it rounds up).
        return simplejpeg.decode_jpeg(
            data, "RGB", min_factor=reduction, min_height=-(-height // reduction), min_width=-(-width // reduction),
            strict=True,
        )
    except ValueError as exc:  # simplejpeg's only error type: libjpeg's message says what is wrong
        raise ImageError("corrupt", f"{name}: damaged JPEG data ({exc})") from None


def _dicom_header(photo: dicom.DicomPhoto, name: str, max_pixels: int, min_side: int) -> ImageHeader:
    header = ImageHeader("DICOM", photo.width, photo.height, photo.photometric)
    _check_size(header, name, max_pixels, min_side)
    return header


def _imdecode(data: bytes, name: str, flags: int) -> np.ndarray:
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        reason = str(exc).strip().splitlines()[-1]
        raise ImageError("corrupt", f"{name}: the decoder failed ({reason})") from None
    if pixels is None or pixels.size == 0:
        raise ImageError("corrupt", f"{name}: the image data is corrupt (the decoder returned nothing)")
    return pixels


def _check_jpeg_complete(data: bytes, name: str) -> None:
    """Refuse a JPEG without an EOI marker after its first scan (i.e. a truncated file).

    Hand-written because neither OpenCV nor Pillow's header parse reports truncation without a
    full decode. Marker segments up to the first SOS carry their lengths, so we hop over them (an
    EXIF thumbnail has its own EOI inside APP1); after SOS every 0xFF in entropy-coded data is
    byte-stuffed, so any FF D9 after it is the real end of image.
    """
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            raise ImageError("corrupt", f"{name}: corrupt JPEG (bad marker at byte {pos})")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xDA:  # start of scan
            # rfind: the EOI is normally the last two bytes, and bytes.find is slow over the
            # many stuffed 0xFF bytes of entropy-coded data (~1.4 ms for 12 MP vs ~0).
            if data.rfind(b"\xff\xd9", pos) >= 0:
                return
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    raise ImageError("corrupt", f"{name}: truncated JPEG (the file ends before its end-of-image marker)")


def _check_complete(data: bytes, fmt: str, name: str) -> None:
    """Truncation checks for the formats whose end is cheap to verify (see module docstring).

    (A truncated WebP or TIFF already fails Pillow's header parse.)
    """
    if fmt == "PNG" and _PNG_IEND not in data:
        raise ImageError("corrupt", f"{name}: truncated PNG (no IEND chunk)")
    if fmt == "BMP":
        declared = int.from_bytes(data[2:6], "little")  # bfSize: the whole file
        if len(data) < declared:
            raise ImageError(
                "corrupt", f"{name}: truncated BMP ({len(data):,} of the {declared:,} bytes its header declares)"
            )


def _array_to_rgb(pixels: np.ndarray, name: str, *, from_bgr: bool) -> np.ndarray:
    """Grey / colour / with alpha, 8 or 16 bit -> RGB uint8. ``from_bgr``: OpenCV channel order."""
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageError("unsupported", f"{name}: {pixels.dtype} samples are not supported (8 or 16-bit only)")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2:
        return cv2.cvtColor(_to_uint8(pixels), cv2.COLOR_GRAY2RGB)
    channels = pixels.shape[2]
    if channels == 4:
        colour, alpha = pixels[:, :, :3], pixels[:, :, 3:]
        full = float(np.iinfo(pixels.dtype).max)
        pixels = (colour.astype(np.float32) * (alpha.astype(np.float32) / full)).astype(pixels.dtype)
    elif channels != 3:
        raise ImageError("unsupported", f"{name}: {channels}-channel images are not supported")
    rgb = _to_uint8(pixels)
    if from_bgr:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(rgb)


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    bits = max(8, int(pixels.max()).bit_length())
    return cv2.convertScaleAbs(pixels, alpha=255.0 / ((1 << bits) - 1))


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (the transforms Pillow's ``ImageOps.exif_transpose`` uses)."""
    if orientation == 2:
        rgb = rgb[:, ::-1]
    elif orientation == 3:
        rgb = rgb[::-1, ::-1]
    elif orientation == 4:
        rgb = rgb[::-1]
    elif orientation == 5:
        rgb = rgb.transpose(1, 0, 2)
    elif orientation == 6:
        rgb = np.rot90(rgb, -1)
    elif orientation == 7:
        rgb = rgb.transpose(1, 0, 2)[::-1, ::-1]
    elif orientation == 8:
        rgb = np.rot90(rgb, 1)
    else:
        return rgb
    return np.ascontiguousarray(rgb)
