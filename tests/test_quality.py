"""Quality gate: real fundus photos pass, non-fundus pictures and unusable frames do not."""
from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from edge_retina.preprocess import InputSpec, Preprocessor, find_field_of_view
from edge_retina.quality import (
    REASONS,
    THRESHOLDS,
    Quality,
    assess_quality,
    quality_metrics,
)

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def preprocessor():
    return Preprocessor(InputSpec(size=(224, 224)))


def _gate(preprocessor, rgb) -> Quality:
    return preprocessor.prepare(rgb).quality


def test_real_retina_is_gradable(preprocessor, retina_rgb):
    quality = _gate(preprocessor, retina_rgb)
    assert quality.gradable and quality.reason is None
    assert quality.metrics["fov_found"] == 1.0
    assert quality.metrics["red_share"] > 0.5 and quality.metrics["blue_share"] < 0.2


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry"])
def test_non_fundus_pictures_are_ungradable(preprocessor, name):
    quality = _gate(preprocessor, getattr(skimage_data, name)())
    assert not quality.gradable
    assert quality.reason == "not_fundus", quality


@pytest.mark.parametrize("value", [0, 128, 255])
def test_uniform_frames_have_no_field_of_view(preprocessor, value):
    frame = np.full((480, 640, 3), value, np.uint8)
    quality = _gate(preprocessor, frame)
    assert quality.reason == "no_field_of_view", quality


def test_black_frame_with_sensor_noise(preprocessor):
    noisy_black = np.random.default_rng(0).integers(0, 4, (480, 640, 3)).astype(np.uint8)
    assert _gate(preprocessor, noisy_black).reason == "no_field_of_view"


def test_too_dark(preprocessor, retina_rgb):
    dark = (retina_rgb * 0.06).astype(np.uint8)
    quality = _gate(preprocessor, dark)
    assert quality.reason == "too_dark", quality
    assert quality.metrics["brightness"] < THRESHOLDS["min_brightness"]


def test_overexposed(preprocessor, retina_rgb):
    washed_out = np.clip(retina_rgb.astype(np.int32) * 4 + 60, 0, 255).astype(np.uint8)
    quality = _gate(preprocessor, washed_out)
    assert quality.reason == "overexposed", quality


def test_too_blurry(preprocessor, retina_rgb):
    retina = cv2.resize(retina_rgb, (512, 512), interpolation=cv2.INTER_AREA)  # a fast blur
    quality = _gate(preprocessor, cv2.GaussianBlur(retina, (0, 0), 512 / 20))
    assert quality.reason == "too_blurry", quality
    # Mild blur is still gradable (the datasets' cataract photos are blurrier than this).
    assert _gate(preprocessor, cv2.GaussianBlur(retina, (0, 0), 512 / 128)).gradable


def test_assess_quality_standalone_matches_pipeline(preprocessor, retina_rgb):
    """The gate on a full-size image with its FoV gives the pipeline's verdict."""
    standalone = assess_quality(retina_rgb, find_field_of_view(retina_rgb))
    pipeline = _gate(preprocessor, retina_rgb)
    assert standalone.gradable == pipeline.gradable
    for key, value in pipeline.metrics.items():
        assert standalone.metrics[key] == pytest.approx(value, rel=0.1, abs=0.02), key


def test_metrics_and_reasons_are_documented(retina_rgb):
    metrics = quality_metrics(retina_rgb, find_field_of_view(retina_rgb))
    assert set(metrics) == {
        "fov_found", "coverage", "brightness", "contrast", "red_share", "blue_share",
        "white_fraction", "texture", "sharpness", "chroma",
    }  # fmt: skip
    assert all(isinstance(v, float) for v in metrics.values())
    assert set(REASONS) == {"no_field_of_view", "not_fundus", "too_dark", "overexposed", "too_blurry"}


def test_real_photographs_are_gradable(shared_datasets, preprocessor):
    """A sample of every dataset (the full 4.9k run is in the quality module's docstring)."""
    rng = random.Random(0)
    paths = []
    for pattern, count in [("heimed/images/*.jpg", 15), ("rimone/images/*.jpg", 15), ("eye4class/images/*/*.jpg", 40)]:
        paths += rng.sample(sorted(shared_datasets.glob(pattern)), count)
    ungradable = [(p.name, q.reason) for p in paths if not (q := preprocessor.prepare(p).quality).gradable]
    assert not ungradable
