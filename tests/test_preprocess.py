"""Preprocessing: decoding and conversions, field of view, resize modes, normalisation, pipeline."""
from __future__ import annotations

import io
import random
import struct

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps, PngImagePlugin

from edge_retina.preprocess import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    MIN_SIDE,
    FieldOfView,
    InputSpec,
    PreparedImage,
    Preprocessor,
    crop_to_fov,
    decode_image,
    find_field_of_view,
    probe_image,
)
from edge_retina.preprocess.decode import choose_reduction
from edge_retina.preprocess.resize import letterbox_geometry, normalise, resize_to_spec


def _write(path, rgb, params=()):
    """Write an RGB(A) or grey uint8/uint16 array with OpenCV (which wants BGR)."""
    if rgb.ndim == 3:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGRA if rgb.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), rgb, list(params))
    return path


def _synthetic_fundus(width, height, centre, radius, seed=0):
    """An orange disc with darker 'vessels' on black, like a fundus photo."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    cv2.circle(image, centre, radius, (200, 110, 50), -1, lineType=cv2.LINE_AA)
    vessels = np.zeros_like(image)
    for _ in range(12):
        p0 = tuple(int(v) for v in rng.integers(0, (width, height)))
        p1 = tuple(int(v) for v in rng.integers(0, (width, height)))
        cv2.line(vessels, p0, p1, (80, 60, 30), 3)
    disc = np.zeros((height, width), np.uint8)
    cv2.circle(disc, centre, radius, 255, -1)
    image = np.where((vessels.any(axis=2) & (disc > 0))[..., None], image - vessels, image)
    return image.astype(np.uint8)


# --- public API --------------------------------------------------------------------------------


def test_public_constants():
    assert MAX_PIXELS >= 50_000_000 and MIN_SIDE == 64
    assert {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"} <= set(IMAGE_EXTENSIONS)
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)


def test_prepare_real_jpeg(retina_jpeg):
    spec = InputSpec(size=(224, 224), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    prepared = Preprocessor(spec).prepare(retina_jpeg)
    assert isinstance(prepared, PreparedImage)
    assert prepared.tensor.shape == (1, 3, 224, 224) and prepared.tensor.dtype == np.float32
    assert prepared.image.shape == (224, 224, 3) and prepared.image.dtype == np.uint8
    assert prepared.source_size == (1411, 1411)
    assert prepared.fov.found and prepared.fov.image_size == (1411, 1411)
    assert prepared.quality.gradable, prepared.quality
    assert set(prepared.timings) == {"decode", "preprocess"}
    assert all(0 < t < 5 for t in prepared.timings.values())
    # The tensor is exactly the normalised image.
    np.testing.assert_allclose(prepared.tensor, Preprocessor(spec).normalise(prepared.image), rtol=0, atol=0)


def test_sources_agree(retina_jpeg):
    """A path, its bytes and the decoded array give the same model input."""
    pre = Preprocessor(InputSpec(size=(128, 128)))
    from_path = pre.prepare(retina_jpeg)
    from_bytes = pre.prepare(retina_jpeg.read_bytes())
    from_str = pre.prepare(str(retina_jpeg))
    np.testing.assert_array_equal(from_path.image, from_bytes.image)
    np.testing.assert_array_equal(from_path.image, from_str.image)
    from_array = pre.prepare(decode_image(retina_jpeg).rgb)
    assert np.abs(from_array.image.astype(int) - from_path.image).mean() < 2.0


# --- decoding ----------------------------------------------------------------------------------


def test_choose_reduction():
    assert choose_reduction(4000, 3000, 280) == 8  # 375 px
    assert choose_reduction(2196, 1958, 280) == 4  # 1958 / 8 = 245 < 280
    assert choose_reduction(1024, 913, 280) == 2
    assert choose_reduction(400, 400, 280) == 1
    assert choose_reduction(4000, 3000, 0) == 8


def test_reduced_decode_matches_full_decode(tmp_path, retina_rgb):
    big = cv2.resize(retina_rgb, (2822, 2822), interpolation=cv2.INTER_CUBIC)
    path = _write(tmp_path / "big.jpg", big, (cv2.IMWRITE_JPEG_QUALITY, 95))
    reduced = decode_image(path, min_short_side=300)
    full = decode_image(path)
    assert reduced.reduction == 8 and full.reduction == 1
    assert reduced.rgb.shape == (353, 353, 3)  # ceil(2822 / 8)
    shrunk = cv2.resize(full.rgb, (353, 353), interpolation=cv2.INTER_AREA)
    assert np.abs(shrunk.astype(int) - reduced.rgb).mean() < 2.0
    # ... and through the whole pipeline: reduced decode vs the full-resolution array.
    pre = Preprocessor(InputSpec(size=(224, 224)))
    via_reduced = pre.prepare(path).image.astype(int)
    via_full = pre.prepare(full.rgb).image.astype(int)
    assert np.abs(via_reduced - via_full).mean() < 3.0


def test_reduced_decode_never_below_model_input(tmp_path, retina_rgb):
    path = _write(tmp_path / "r.jpg", cv2.resize(retina_rgb, (2000, 1500)))
    for size in [(224, 224), (384, 384), (512, 384)]:
        decoded = decode_image(path, min_short_side=max(size))
        assert min(decoded.rgb.shape[:2]) >= max(size)


def test_small_fov_is_decoded_again_at_higher_resolution(tmp_path):
    # A FoV spanning only 40 % of the shorter side: the first reduced decode is too coarse.
    image = _synthetic_fundus(3000, 3000, (1500, 1500), 600)
    path = _write(tmp_path / "small_fov.jpg", image)
    prepared = Preprocessor(InputSpec(size=(224, 224))).prepare(path)
    assert prepared.fov.found
    assert 2 * prepared.fov.radius == pytest.approx(1200, rel=0.03)
    # The disc fills the model input: letterboxing its box leaves no padding.
    assert prepared.image[112, :, 0].min() > 0 or prepared.image[:, 112, 0].min() > 0


def test_png_16bit_scaled_by_real_range(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 256).astype(np.uint16), (80, 1))  # 12-bit data
    rgb16 = np.dstack([ramp, ramp // 2, ramp // 4])
    path = _write(tmp_path / "deep.png", rgb16)
    decoded = decode_image(path).rgb
    assert decoded.dtype == np.uint8
    assert decoded[0, -1, 0] == 255 and decoded[0, 0, 0] == 0  # 4095 -> 255, not 4095 >> 8 = 15
    assert decoded[0, -1, 1] == pytest.approx(128, abs=1)
    # The same from a numpy array and from a 16-bit TIFF.
    np.testing.assert_array_equal(decode_image(rgb16).rgb, decoded)
    np.testing.assert_array_equal(decode_image(_write(tmp_path / "deep.tif", rgb16)).rgb, decoded)


def test_alpha_composited_onto_black(tmp_path):
    rgba = np.zeros((80, 80, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, :40, 3] = 255  # left half opaque, right half transparent
    rgba[:, 40:60, 3] = 128
    for decoded in (decode_image(_write(tmp_path / "alpha.png", rgba)).rgb, decode_image(rgba).rgb):
        assert decoded.shape == (80, 80, 3)
        np.testing.assert_array_equal(decoded[0, 0], (200, 100, 50))
        np.testing.assert_array_equal(decoded[0, 70], (0, 0, 0))
        np.testing.assert_allclose(decoded[0, 50], (100, 50, 25), atol=1)


def test_greyscale_becomes_three_channels(tmp_path):
    grey = np.tile(np.arange(0, 256, 2, dtype=np.uint8), (100, 1))
    for source in (grey, grey[..., None], _write(tmp_path / "grey.png", grey), _write(tmp_path / "grey.jpg", grey)):
        decoded = decode_image(source).rgb
        assert decoded.shape == (100, 128, 3)
        assert (decoded[..., 0] == decoded[..., 1]).all() and (decoded[..., 1] == decoded[..., 2]).all()


@pytest.mark.parametrize("suffix", [".bmp", ".tif", ".webp", ".png", ".jpg"])
def test_other_formats(tmp_path, retina_rgb, suffix):
    small = cv2.resize(retina_rgb, (300, 300), interpolation=cv2.INTER_AREA)
    params = (cv2.IMWRITE_WEBP_QUALITY, 101) if suffix == ".webp" else ()  # 101: lossless
    decoded = decode_image(_write(tmp_path / f"r{suffix}", small, params))
    assert decoded.rgb.shape == (300, 300, 3)
    tolerance = 3.0 if suffix == ".jpg" else 0.0
    assert np.abs(decoded.rgb.astype(int) - small).mean() <= tolerance
    assert probe_image(tmp_path / f"r{suffix}").format in ("BMP", "TIFF", "WEBP", "PNG", "JPEG")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow(tmp_path, orientation):
    rng = np.random.default_rng(orientation)
    blocks = rng.integers(0, 255, (3, 2, 3)).astype(np.uint8)
    stored = cv2.resize(blocks, (160, 240), interpolation=cv2.INTER_NEAREST)  # asymmetric, 160x240
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, "JPEG", quality=95, exif=exif)
    data = buffer.getvalue()
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    header = probe_image(data)
    assert header.orientation == orientation
    assert (header.width, header.height) == (expected.shape[1], expected.shape[0])
    decoded = decode_image(data).rgb
    assert decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected).mean() < 2.0
    # The reduced decode turns the image the same way.
    reduced = decode_image(data, min_short_side=70)
    assert reduced.reduction == 2
    assert reduced.rgb.shape == (expected.shape[0] // 2, expected.shape[1] // 2, 3)


def _move_png_chunk_to_the_end(data: bytes, kind: bytes) -> bytes:
    """``data`` (a PNG) with its ``kind`` chunk moved after the image data, just before IEND."""
    pos, kept, moved = 8, [], []
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        chunk = data[pos : pos + 12 + length]
        (moved if chunk[4:8] == kind else kept).append(chunk)
        pos += 12 + length
    assert moved and kept[-1][4:8] == b"IEND"
    return data[:8] + b"".join(kept[:-1] + moved + kept[-1:])


@pytest.mark.parametrize(
    "tag, after_the_pixels",
    [("eXIf", False), ("eXIf", True), ("iTXt", True)],  # iTXt: XMP's tiff:Orientation, which Pillow reads too
)
@pytest.mark.parametrize("orientation", [3, 6])
def test_png_orientation_is_applied_like_pillow_without_a_pillow_decode(
    monkeypatch, tag, after_the_pixels, orientation
):
    """Pillow finds a PNG's orientation after the image data only by decoding the image: we read
    it from the chunks alone, and turn the image just as Pillow does."""
    stored = cv2.resize(np.random.default_rng(orientation).integers(0, 255, (3, 2, 3)).astype(np.uint8), (160, 240),
                        interpolation=cv2.INTER_NEAREST)
    buffer = io.BytesIO()
    if tag == "eXIf":
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(stored).save(buffer, "PNG", exif=exif)
    else:
        info = PngImagePlugin.PngInfo()
        xmp = f'<x:xmpmeta><rdf:Description tiff:Orientation="{orientation}"/></x:xmpmeta>'
        info.add_itxt("XML:com.adobe.xmp", xmp)
        Image.fromarray(stored).save(buffer, "PNG", pnginfo=info)
    data = _move_png_chunk_to_the_end(buffer.getvalue(), tag.encode()) if after_the_pixels else buffer.getvalue()
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    loads = []
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda im: loads.append(im.size))
    decoded = decode_image(data)
    assert decoded.header.orientation == orientation
    assert np.array_equal(decoded.rgb, expected)
    assert loads == []


# --- field of view -----------------------------------------------------------------------------


def test_fov_on_real_retina(retina_rgb):
    fov = find_field_of_view(retina_rgb)
    assert fov.found
    # Independent estimate: the extent of the pixels clearly above the black background.
    ys, xs = np.nonzero(retina_rgb.max(axis=2) > 20)
    centre = ((xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2)
    radius = (xs.max() - xs.min() + ys.max() - ys.min() + 2) / 4
    assert fov.centre == pytest.approx(centre, abs=0.01 * radius)
    assert fov.radii == pytest.approx((radius, radius), rel=0.01)
    assert fov.coverage == pytest.approx(np.pi * radius**2 / retina_rgb[..., 0].size, rel=0.05)


@pytest.mark.parametrize(
    "width, height, centre, radius",
    [(800, 600, (410, 290), 250), (800, 600, (400, 300), 340), (1200, 700, (600, 350), 420)],
    ids=["inside", "clipped-top-bottom", "wide-clipped"],
)
def test_fov_on_synthetic_circle(width, height, centre, radius):
    image = _synthetic_fundus(width, height, centre, radius)
    fov = find_field_of_view(image)
    assert fov.found
    assert fov.centre == pytest.approx(centre, abs=0.02 * radius)
    assert fov.radii == pytest.approx((radius, radius), rel=0.03)
    x0, y0, x1, y1 = fov.box
    assert (x1 - x0) == pytest.approx(2 * radius, rel=0.03) and (y1 - y0) == pytest.approx(2 * radius, rel=0.03)
    crop = crop_to_fov(image, fov)
    assert crop.shape[:2] == (y1 - y0, x1 - x0)
    if radius > height / 2:  # the part outside the image is padded with black
        assert y0 < 0 and (crop[0] == 0).all() and (crop[-1] == 0).all()


def test_fov_scaled_and_mask():
    fov = find_field_of_view(_synthetic_fundus(800, 600, (400, 300), 250))
    half = fov.scaled(400, 300)
    assert half.centre == pytest.approx((200, 150), abs=6) and half.radius == pytest.approx(125, rel=0.03)
    mask = fov.mask(400, 300)
    assert mask.shape == (300, 400) and mask[150, 200] and not mask[5, 5]
    assert mask.mean() == pytest.approx(np.pi * 125**2 / (400 * 300), rel=0.05)


def test_crop_without_border_is_passthrough():
    textured = np.random.default_rng(0).integers(60, 200, (300, 300, 3)).astype(np.uint8)
    fov = find_field_of_view(textured)
    assert not fov.found and fov.box == (0, 0, 300, 300)
    assert crop_to_fov(textured, fov) is textured


def test_rimone_crops_pass_through(shared_datasets):
    """RIM-ONE optic-disc crops have no FoV border: the crop must be the whole image."""
    paths = sorted((shared_datasets / "rimone" / "images").glob("*.jpg"))
    sample = random.Random(0).sample(paths, 40)
    pre = Preprocessor(InputSpec(size=(224, 224), resize_mode="stretch"))
    for path in sample:
        prepared = pre.prepare(path)
        assert not prepared.fov.found, path.name
        assert prepared.fov.box == (0, 0, *prepared.source_size)
        assert prepared.quality.gradable, (path.name, prepared.quality)


def test_fov_found_on_full_photographs(shared_datasets):
    heimed = sorted((shared_datasets / "heimed" / "full").glob("*.jpg"))[:3]
    eye4class = sorted((shared_datasets / "eye4class" / "images" / "normal").glob("*.jpg"))
    for path in heimed + random.Random(0).sample(eye4class, 20):
        prepared = Preprocessor(InputSpec()).prepare(path)
        fov = prepared.fov
        assert fov.found, path.name
        width, height = prepared.source_size
        assert abs(fov.centre[0] - width / 2) < 0.06 * width, path.name
        assert 0.4 * min(width, height) < fov.radius < 0.65 * max(width, height), path.name


# --- resize and normalise ----------------------------------------------------------------------


def _stripes():
    """300 wide x 150 high: red | green | blue thirds."""
    image = np.zeros((150, 300, 3), np.uint8)
    image[:, :100, 0] = image[:, 100:200, 1] = image[:, 200:, 2] = 255
    return image


def test_letterbox_centre():
    spec = InputSpec(size=(100, 100), resize_mode="letterbox", pad_position="centre", pad_value=7)
    out = resize_to_spec(_stripes(), spec)
    assert letterbox_geometry(300, 150, spec) == (0, 25, 100, 50)
    assert out.shape == (100, 100, 3)
    assert (out[:25] == 7).all() and (out[75:] == 7).all()
    assert out[50, 10, 0] == 255 and out[50, 50, 1] == 255 and out[50, 90, 2] == 255


def test_letterbox_top_left():
    spec = InputSpec(size=(100, 100), resize_mode="letterbox", pad_position="top-left", pad_value=0)
    out = resize_to_spec(_stripes(), spec)
    assert letterbox_geometry(300, 150, spec) == (0, 0, 100, 50)
    assert out[:50].max(axis=2).min() > 100 and (out[50:] == 0).all()


def test_letterbox_tall_and_non_square_target():
    spec = InputSpec(size=(60, 120), resize_mode="letterbox")  # height 60, width 120
    out = resize_to_spec(np.full((200, 100, 3), 255, np.uint8), spec)
    assert out.shape == (60, 120, 3)
    assert (out[:, 45:75] == 255).all() and (out[:, :44] == 0).all() and (out[:, 76:] == 0).all()


def test_centre_crop_keeps_the_middle():
    out = resize_to_spec(_stripes(), InputSpec(size=(100, 100), resize_mode="centre-crop"))
    assert out.shape == (100, 100, 3)
    # The centre 150x150 window: a quarter red | half green | a quarter blue... of the centre third.
    assert out[50, 50, 1] == 255
    assert out[50, 2, 0] == 255 and out[50, 97, 2] == 255
    assert (out[:, 20:80, 1] == 255).all()


def test_stretch_fills_everything():
    spec = InputSpec(size=(64, 32), resize_mode="stretch", interpolation="area")
    out = resize_to_spec(_stripes(), spec)
    assert out.shape == (64, 32, 3)
    assert out[:, :9, 0].min() == 255 and out[:, 12:20, 1].min() == 255 and out[:, 23:, 2].min() == 255


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "area"])
def test_interpolations_agree_on_smooth_images(retina_rgb, interpolation):
    spec = InputSpec(size=(224, 224), interpolation=interpolation)
    reference = resize_to_spec(retina_rgb, InputSpec(size=(224, 224), interpolation="area"))
    assert np.abs(resize_to_spec(retina_rgb, spec).astype(int) - reference).mean() < 3.0


def test_bilinear_shrink_is_antialiased_like_pil(retina_rgb):
    """Shrinking 1411 -> 224 px: close to PIL's antialiased bilinear, unlike plain INTER_LINEAR."""
    spec = InputSpec(size=(224, 224), resize_mode="stretch", interpolation="bilinear")
    pil = np.asarray(Image.fromarray(retina_rgb).resize((224, 224), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(resize_to_spec(retina_rgb, spec).astype(int) - pil).mean() < 1.0
    aliased = cv2.resize(retina_rgb, (224, 224), interpolation=cv2.INTER_LINEAR).astype(int)
    assert np.abs(aliased - pil).mean() > 1.0


def test_normalise_values_and_layout():
    spec = InputSpec(size=(8, 12), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    image = np.zeros((8, 12, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 0, 51
    tensor = normalise(image, spec)
    assert tensor.shape == (1, 3, 8, 12) and tensor.dtype == np.float32 and tensor.flags.c_contiguous
    np.testing.assert_allclose(tensor[0, :, 0, 0], (1.0, -1.0, 0.2), rtol=1e-6)
    # BGR: channel 0 is blue, and mean/std apply in that order.
    bgr = normalise(image, InputSpec(size=(8, 12), colour_order="BGR", mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0)))
    np.testing.assert_allclose(bgr[0, :, 0, 0], ((0.2 - 0.5) / 0.5, (0 - 0.25) / 0.25, 1.0), rtol=1e-6)


def test_normalise_batches_and_checks_shape():
    spec = InputSpec(size=(8, 8))
    batch = np.random.default_rng(0).integers(0, 255, (5, 8, 8, 3)).astype(np.uint8)
    tensor = Preprocessor(spec).normalise(batch)
    assert tensor.shape == (5, 3, 8, 8)
    np.testing.assert_allclose(tensor[3], normalise(batch[3], spec)[0])
    with pytest.raises(ValueError, match="input spec wants 8x8"):
        normalise(np.zeros((9, 8, 3), np.uint8), spec)
    with pytest.raises(ValueError, match="uint8"):
        normalise(np.zeros((8, 8, 3), np.float32), spec)


@pytest.mark.parametrize("resize_mode", ["letterbox", "centre-crop", "stretch"])
def test_prepare_every_mode_and_no_fov_crop(retina_jpeg, resize_mode):
    for fov_crop in (True, False):
        spec = InputSpec(size=(96, 128), resize_mode=resize_mode, fov_crop=fov_crop)
        prepared = Preprocessor(spec).prepare(retina_jpeg)
        assert prepared.image.shape == (96, 128, 3) and prepared.tensor.shape == (1, 3, 96, 128)
        assert isinstance(prepared.fov, FieldOfView) and prepared.fov.found
