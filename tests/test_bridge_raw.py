"""Protocol 1.1 raw frames: pixel formats, row stride, Bayer mosaics; a raw frame screens like the
JPEG made from it; protocol 1.0 clients keep working."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from bridge_support import camera_frame, connect, running_server

from edge_retina.errors import ImageError
from edge_retina.preprocess import decode_image
from edge_retina.preprocess.raw import PIXEL_FORMATS, RawFrame
from firmware_bridge.protocol import Message, MessageType

CHANNEL = {"R": 0, "G": 1, "B": 2}


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """What a Bayer sensor with ``pattern`` (top-left 2x2 block, row by row) records of ``rgb``."""
    out = np.empty(rgb.shape[:2], np.uint8)
    for dy in (0, 1):
        for dx in (0, 1):
            out[dy::2, dx::2] = rgb[dy::2, dx::2, CHANNEL[pattern[2 * dy + dx]]]
    return out


def padded(rows: np.ndarray, stride: int) -> bytes:
    """``rows`` (H, row bytes) with each row padded to ``stride`` bytes, as a DMA buffer has them."""
    flat = rows.reshape(rows.shape[0], -1)
    buffer = np.full((flat.shape[0], stride), 0xAA, np.uint8)
    buffer[:, : flat.shape[1]] = flat
    return buffer.tobytes()


def jpeg_of(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return encoded.tobytes()


@pytest.fixture(scope="module")
def photo(retina_rgb) -> np.ndarray:
    return camera_frame(retina_rgb)


def test_every_pixel_format_gives_the_rgb_frame(photo):
    h, w = photo.shape[:2]
    assert np.array_equal(RawFrame(photo.tobytes(), "rgb8", w, h).rgb(), photo)
    assert np.array_equal(RawFrame(padded(photo[:, :, ::-1], w * 3 + 64), "bgr8", w, h, w * 3 + 64).rgb(), photo)
    grey = photo[:, :, 1]
    assert np.array_equal(RawFrame(grey.tobytes(), "gray8", w, h).rgb(), np.dstack([grey] * 3))
    for pattern in ("RGGB", "BGGR", "GRBG", "GBRG"):
        rgb = RawFrame(padded(mosaic(photo, pattern), w + 32), f"bayer_{pattern.lower()}8", w, h, w + 32).rgb()
        # Bilinear demosaicing of a smooth photograph: close to it everywhere but at sharp edges.
        assert np.median(np.abs(rgb.astype(int) - photo.astype(int))) <= 2, pattern
    assert set(PIXEL_FORMATS) == {"rgb8", "bgr8", "gray8", "bayer_rggb8", "bayer_bggr8", "bayer_grbg8", "bayer_gbrg8"}


def test_frames_that_do_not_fit_their_layout_are_refused(photo):
    with pytest.raises(ImageError) as short:
        RawFrame(photo.tobytes()[:-1], "rgb8", 640, 480).decode()
    assert short.value.code == "corrupt"
    with pytest.raises(ImageError) as unknown:
        RawFrame(photo.tobytes(), "yuv422", 640, 480).decode()
    assert unknown.value.code == "unsupported"
    with pytest.raises(ImageError) as huge:  # the JPEG limits, checked before any pixel is read
        RawFrame(b"", "rgb8", 20_000, 20_000).decode()
    assert huge.value.code == "too_large"


def test_a_raw_frame_is_reduced_like_a_jpeg_of_it(photo):
    from_jpeg = decode_image(jpeg_of(photo), min_short_side=100)
    from_raw = RawFrame(photo.tobytes(), "rgb8", 640, 480).decode(min_short_side=100)
    assert from_raw.reduction == from_jpeg.reduction == 4 and from_raw.rgb.shape == from_jpeg.rgb.shape == (120, 160, 3)
    assert np.abs(from_raw.rgb.astype(int) - from_jpeg.rgb.astype(int)).mean() < 2


def test_a_raw_frame_screens_like_the_jpeg_made_from_it(screener, photo, tmp_path):
    """The camera's JPEG is made from its RGB frame; for a Bayer sensor, from the demosaiced frame."""
    h, w = photo.shape[:2]
    bayer = mosaic(photo, "RGGB").tobytes()
    frames = {  # pixel format: (frame, stride, the RGB image the camera would encode)
        "rgb8": (photo.tobytes(), None, photo),
        "bgr8": (padded(photo[:, :, ::-1], w * 3 + 16), w * 3 + 16, photo),
        "bayer_rggb8": (bayer, None, RawFrame(bayer, "bayer_rggb8", w, h).rgb()),
    }
    with running_server(screener, tmp_path / "r.sqlite3") as (_, address), connect(address) as client:
        hello = client.hello()
        assert hello["version"] == 1 and hello["minor_version"] >= 1 and "bayer_rggb8" in hello["pixel_formats"]
        for pixel_format, (frame, stride, encoded) in frames.items():
            from_jpeg = client.screen(f"cam:{pixel_format}:jpeg", jpeg_of(encoded))["result"]
            reply = client.screen_raw(f"cam:{pixel_format}", frame, width=w, height=h, pixel_format=pixel_format,
                                      stride=stride, eye="left")
            assert reply["meta"] == {"request_id": f"cam:{pixel_format}", "format": "raw", "eye": "left",
                                     "pixel_format": pixel_format, "width": w, "height": h,
                                     "stride": stride or w * PIXEL_FORMATS[pixel_format][0]}
            result = reply["result"]
            assert result["status"] == from_jpeg["status"] != "error"
            assert result["probabilities"] == pytest.approx(from_jpeg["probabilities"], abs=0.02), pixel_format


def camera_photos(shared_datasets) -> list:
    """Real photographs and the raw frames a camera would have held: four of HEI-MED's 2196x1958
    camera originals (decoded at 1/8 for the model, each its own full decode as the frame) and three
    of its 1024-px photos (decoded at 1/2), plus one original upscaled onto a 4000x3000 canvas as a 12 MP
    camera JPEG (decoded at 1/8) whose frame is its full decode reduced to 3 MP (2000x1500, area).
    """
    heimed = shared_datasets / "heimed"
    pairs = []
    for path in sorted((heimed / "full").glob("*.jpg"))[:4] + sorted((heimed / "images").glob("*.jpg"))[:3]:
        jpeg = path.read_bytes()
        pairs.append((path.name, jpeg, decode_image(jpeg).rgb))
    original = pairs[0][2]
    canvas = np.zeros((3000, 4000, 3), np.uint8)
    upscaled = cv2.resize(original, (round(original.shape[1] * 3000 / original.shape[0]), 3000),
                          interpolation=cv2.INTER_CUBIC)
    left = (4000 - upscaled.shape[1]) // 2
    canvas[:, left : left + upscaled.shape[1]] = upscaled
    jpeg = jpeg_of(canvas)
    frame = cv2.resize(decode_image(jpeg).rgb, (2000, 1500), interpolation=cv2.INTER_AREA)
    return pairs + [("12 MP of " + pairs[0][0], jpeg, frame)]


def test_raw_frames_of_camera_photos_match_their_jpegs(screener, shared_datasets):
    """The reduced raw frame has the JPEG's reduced pixels up to rounding (libjpeg's scaled decode is
    a block mean; an area resize to the reduced size, the raw route before, stretched the grid: mean
    differences of 0.4-1.0 and 99th percentiles of 3-8 on these photos), and the screening probabilities
    agree within 0.02."""
    for name, jpeg, rgb in camera_photos(shared_datasets):
        frame = RawFrame(np.ascontiguousarray(rgb).tobytes(), "rgb8", rgb.shape[1], rgb.shape[0])
        from_jpeg, from_raw = decode_image(jpeg, min_short_side=240), frame.decode(min_short_side=240)
        assert from_jpeg.rgb.shape == from_raw.rgb.shape and from_jpeg.reduction > 1, name
        difference = np.abs(from_jpeg.rgb.astype(int) - from_raw.rgb.astype(int))
        assert difference.mean() < 0.35 and np.percentile(difference, 99) <= 2, name
        jpeg_result, raw_result = screener.screen(jpeg), screener.screen(frame)
        assert raw_result.probabilities == pytest.approx(jpeg_result.probabilities, abs=0.02), name


def test_bad_raw_layouts_get_bad_request(screener, photo, tmp_path):
    body = photo.tobytes()
    with running_server(screener, tmp_path / "r.sqlite3") as (_, address), connect(address) as client:
        for layout in [
            {"pixel_format": "rgb8", "width": 640},  # no height
            {"pixel_format": "rgb8", "width": 640, "height": True},
            {"pixel_format": "rgb10", "width": 640, "height": 480},
            {"pixel_format": "rgb8", "width": 640, "height": 480, "stride": 1000},  # under 3 bytes a pixel
            {"pixel_format": "rgb8", "width": 640, "height": 480, "stride": 2000},  # body too short for it
            {"pixel_format": "gray8", "width": 640, "height": 480},  # 3x too many bytes
        ]:
            reply = client.request(Message(MessageType.SCREEN, {"request_id": "x", "format": "raw", **layout}, body))
            assert reply.type is MessageType.ERROR and reply.meta["code"] == "bad_request", layout


def test_a_tiny_raw_frame_is_a_too_small_result(screener, tmp_path):
    with running_server(screener, tmp_path / "r.sqlite3") as (_, address), connect(address) as client:
        reply = client.screen_raw("cam:tiny", bytes(32 * 32), width=32, height=32, pixel_format="gray8")
    assert reply["result"]["status"] == "error" and reply["result"]["error_code"] == "too_small"
