"""Bad input: every way an image can fail gives an ImageError with the right code, naming the file."""
from __future__ import annotations

import io
import shutil
import struct
import sys
import threading
import warnings
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from edge_retina.errors import ImageError
from edge_retina.preprocess import (
    MAX_PIXELS,
    MIN_SIDE,
    InputSpec,
    Preprocessor,
    decode_image,
    probe_image,
)
from edge_retina.preprocess.raw import RawFrame


@pytest.fixture(scope="module")
def preprocessor():
    return Preprocessor(InputSpec(size=(64, 64)))


@pytest.fixture(scope="module")
def photo(retina_rgb):
    return cv2.resize(retina_rgb, (320, 320), interpolation=cv2.INTER_AREA)


def _encode(rgb, ext):
    ok, buffer = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buffer.tobytes()


def _expect(preprocessor, source, code, name=None):
    with pytest.raises(ImageError) as info:
        preprocessor.prepare(source)
    assert info.value.code == code, str(info.value)
    if name is not None:
        assert name in str(info.value)
    return info.value


def _png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width, height, metadata=b""):
    """A PNG whose header claims width x height, with a 1-row IDAT: enough for any header probe.
    ``metadata``: chunks to put between the header and the image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * 16)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + metadata + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def test_nonexistent_path(preprocessor, tmp_path):
    path = tmp_path / "missing.jpg"
    _expect(preprocessor, path, "not_found", name=str(path))


def test_directory(preprocessor, tmp_path):
    _expect(preprocessor, tmp_path, "not_a_file", name=str(tmp_path))


def test_zero_byte_file(preprocessor, tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    _expect(preprocessor, path, "empty_file", name=str(path))
    _expect(preprocessor, b"", "empty_file")


def test_text_file(preprocessor, tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("patient 12, left eye: photo to follow\n" * 20)
    _expect(preprocessor, path, "not_an_image", name=str(path))


@pytest.mark.parametrize("name, kind", [("photos.zip", "ZIP"), ("photos.tar", "tar"), ("photos.tar.gz", "gzip")])
def test_an_archive_of_photos_is_named_as_an_archive(preprocessor, retina_jpeg, tmp_path, name, kind):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(retina_jpeg, folder / "IMG_1.jpg")
    archive = shutil.make_archive(str(tmp_path / "photos"), {"ZIP": "zip", "tar": "tar", "gzip": "gztar"}[kind],
                                  folder)
    assert archive == str(tmp_path / name)
    error = _expect(preprocessor, archive, "not_an_image", name=archive)
    assert str(error) == f"{archive}: a {kind} archive, not an image file (extract it and screen the folder)"


def test_random_bytes(preprocessor, tmp_path):
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(0).bytes(20_000))
    _expect(preprocessor, path, "not_an_image", name=str(path))


@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".tif", ".webp"])
def test_truncated_file(preprocessor, tmp_path, photo, ext):
    """Cut in half: OpenCV alone might decode the first half and grey the rest."""
    data = _encode(photo, ext)
    path = tmp_path / f"cut{ext}"
    path.write_bytes(data[: len(data) // 2])
    error = _expect(preprocessor, path, "corrupt", name=str(path))
    if ext in (".jpg", ".png", ".bmp"):
        assert "truncated" in str(error)


def test_truncated_jpeg_with_end_marker_in_its_header(preprocessor, photo):
    """An end-of-image marker inside a header segment (here a comment; an EXIF thumbnail is the
    common case) must not hide the truncation."""
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", comment=b"\xff\xd9 in a comment")
    data = buffer.getvalue()
    assert preprocessor.prepare(data).image.shape == (64, 64, 3)
    _expect(preprocessor, data[: len(data) * 2 // 3], "corrupt")


def test_corrupt_pixel_data(preprocessor, tmp_path, photo):
    data = bytearray(_encode(photo, ".png"))
    start = data.find(b"IDAT") + 100
    data[start : start + 500] = bytes(500)  # zlib stream destroyed, header and IEND intact
    path = tmp_path / "damaged.png"
    path.write_bytes(bytes(data))
    _expect(preprocessor, path, "corrupt", name=str(path))


def _scan_start(jpeg: bytes) -> int:
    return jpeg.index(b"\xff\xda") + 2 + int.from_bytes(jpeg[jpeg.index(b"\xff\xda") + 2:][:2], "big")


@pytest.mark.parametrize("damage", ["randomised", "cut-with-end-marker"])
def test_damaged_jpeg_entropy_data_is_never_scored(preprocessor, retina_jpeg, damage):
    """libjpeg only warns ("Corrupt JPEG data", "premature end of data segment") and returns a smeared
    or grey-filled image; such a photo must be reported, not screened."""
    data = bytearray(retina_jpeg.read_bytes())
    scan = _scan_start(bytes(data))
    if damage == "randomised":
        middle = (scan + len(data)) // 2
        data[middle:middle + 20_000] = np.random.default_rng(0).integers(0, 255, 20_000, np.uint8).tobytes()
    else:
        data = data[: (scan + len(data)) // 2] + b"\xff\xd9"
    error = _expect(preprocessor, bytes(data), "corrupt")
    assert "Corrupt JPEG data" in str(error) or "premature end" in str(error)


def test_corrupt_header(preprocessor, photo):
    data = bytearray(_encode(photo, ".jpg"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = bytes(4)  # height and width 0
    _expect(preprocessor, bytes(data), "corrupt")


def test_enormous_image_refused_before_decoding(preprocessor, tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(12_000, 10_000))  # 120 MP: only a warning for Pillow
    with warnings.catch_warnings(record=True) as shown:
        _expect(preprocessor, path, "too_large", name="12000x10000")
        # 400 MP: Pillow's own hard limit would fire; it is still our error, naming our limit.
        _expect(preprocessor, _png_header_only(20_000, 20_000), "too_large", name=f"limit of {MAX_PIXELS:,} pixels")
    assert [str(w.message) for w in shown] == []  # Pillow's bomb warning must not escape


@pytest.fixture(scope="module")
def huge_flat_png():
    """A complete 12000x9000 PNG (108 MP) of 13 KB: a flat image compresses to almost nothing."""
    buffer = io.BytesIO()
    Image.new("1", (12_000, 9_000)).save(buffer, "PNG")
    return buffer.getvalue()


def test_huge_png_refused_without_pillow_decoding_it(preprocessor, huge_flat_png, monkeypatch):
    """The size limit comes from the header alone: reading the orientation used to make Pillow
    decode the whole PNG first (seconds and ~600 MB for a 12000x9000 RGB one)."""
    loads = []
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda im: loads.append(im.size))
    _expect(preprocessor, huge_flat_png, "too_large", name="12000x9000")
    assert loads == []


def test_pillow_warnings_stay_quiet_on_decoding_threads():
    """The screening pipeline decodes on worker threads: Pillow's bomb warning stays quiet on all
    of them (a catch_warnings block per decode switched the filter off under the other thread)."""
    # With an eXIf chunk, so that no probe, before or after the fix, decodes: each one is short.
    bomb = _png_header_only(12_000, 10_000, _png_chunk(b"eXIf", Image.Exif().tobytes()[6:]))
    codes = []

    def probe_many():
        for _ in range(1000):
            try:
                probe_image(bomb)
            except ImageError as exc:
                codes.append(exc.code)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as a loaded machine may
    try:
        with warnings.catch_warnings(record=True) as shown:
            threads = [threading.Thread(target=probe_many) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert codes == ["too_large"] * 2000
    assert [str(w.message) for w in shown] == []


def test_messages_name_the_photo_as_the_caller_names_it(preprocessor, photo):
    """Bytes from an archive or a bridge request are named as the caller names them, not "<bytes>"."""
    truncated = _encode(photo, ".jpg")[:-500]
    with pytest.raises(ImageError) as info:
        preprocessor.prepare(truncated, name="2019/IMG_0001.JPG")
    assert str(info.value).startswith("2019/IMG_0001.JPG: truncated JPEG")
    with pytest.raises(ImageError) as info:
        preprocessor.prepare(RawFrame(bytes(3), "rgb8", 1, 1), name="request 7")
    assert str(info.value).startswith("request 7: 1x1 is too small")
    with pytest.raises(ImageError) as info:
        preprocessor.prepare(truncated)
    assert str(info.value).startswith("<bytes>: ")  # nothing better to say without a name


def test_pixel_limit_is_configurable(photo):
    small_limit = Preprocessor(InputSpec(size=(64, 64)), max_pixels=100_000)
    _expect(small_limit, _encode(photo, ".png"), "too_large", name="320x320")
    with pytest.raises(ImageError) as info:
        probe_image(_encode(photo, ".png"), max_pixels=100_000)
    assert info.value.code == "too_large"


def test_tiny_image(preprocessor, tmp_path, photo):
    path = tmp_path / "thumb.jpg"
    path.write_bytes(_encode(cv2.resize(photo, (MIN_SIDE - 1, 200)), ".jpg"))
    _expect(preprocessor, path, "too_small", name=str(path))
    _expect(preprocessor, np.zeros((40, 400, 3), np.uint8), "too_small", name="<array>")
    lenient = Preprocessor(InputSpec(size=(64, 64)), min_side=16)
    assert lenient.prepare(np.zeros((40, 400, 3), np.uint8)).image.shape == (64, 64, 3)


@pytest.mark.parametrize("fmt", ["GIF", "ICO"])
def test_unsupported_format(preprocessor, photo, fmt):
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, fmt)
    error = _expect(preprocessor, buffer.getvalue(), "unsupported")
    assert fmt in str(error)


@pytest.mark.parametrize(
    "array",
    [np.zeros((100, 100, 3), np.float32), np.zeros((100, 100, 2), np.uint8), np.zeros((2, 100, 100, 3), np.uint8)],
    ids=["float", "two-channels", "batch"],
)
def test_unsupported_arrays(preprocessor, array):
    _expect(preprocessor, array, "unsupported", name="<array>")


def test_wrong_source_type(preprocessor):
    error = _expect(preprocessor, 12345, "not_an_image", name="<int>")
    assert "path, bytes or a numpy array" in str(error)


def test_probe_reads_only_the_header(tmp_path):
    """The probe answers for a file whose pixel data is missing: it never decodes."""
    header = probe_image(_png_header_only(4000, 3000))
    assert (header.format, header.width, header.height, header.mode) == ("PNG", 4000, 3000, "RGB")
    with pytest.raises(ImageError) as info:
        decode_image(_png_header_only(4000, 3000))
    assert info.value.code == "corrupt"
