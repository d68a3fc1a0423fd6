"""The Screener API end to end on a real fundus photograph, with the tiny (random) bundle."""
import numpy as np
import pytest

from edge_retina.errors import EdgeRetinaError
from edge_retina.screener import Screener


def test_screen_real_fundus_photo(screener, retina_jpeg):
    result = screener.screen(retina_jpeg)
    assert result.screened and result.gradable, result
    assert set(result.probabilities) == set(screener.prompt_table.conditions)
    assert all(0.0 <= p <= 1.0 for p in result.probabilities.values())
    assert abs(sum(result.class_probabilities.values()) - 1.0) < 1e-5
    for condition, flagged in result.referral.items():
        assert flagged == (result.probabilities[condition] >= screener.thresholds[condition])
    assert {"decode", "preprocess", "inference", "lookup", "total"} <= set(result.timings_ms)
    assert result.timings_ms["total"] >= result.timings_ms["inference"]
    assert result.to_dict()["status"] in {"refer", "no-referral"}


def test_bytes_array_and_path_give_the_same_scores(screener, retina_jpeg):
    import cv2

    by_path = screener.screen(retina_jpeg)
    by_bytes = screener.screen(retina_jpeg.read_bytes())
    rgb = cv2.cvtColor(cv2.imread(str(retina_jpeg)), cv2.COLOR_BGR2RGB)
    by_array = screener.screen(rgb)
    assert by_bytes.probabilities == pytest.approx(by_path.probabilities, abs=1e-6)
    # A decoded array skips reduced-resolution JPEG decoding, so allow resampling differences.
    assert by_array.probabilities == pytest.approx(by_path.probabilities, abs=0.05)


def test_backends_agree(tiny_bundle, retina_jpeg):
    pytest.importorskip("openvino")
    results = {}
    for backend in ("onnxruntime", "openvino"):
        with Screener.from_bundle(tiny_bundle, backend=backend, keep_embeddings=True) as s:
            results[backend] = s.screen(retina_jpeg)
    a, b = results["onnxruntime"].embedding, results["openvino"].embedding
    assert float(np.dot(a, b)) > 0.9999
    assert results["openvino"].probabilities == pytest.approx(results["onnxruntime"].probabilities, abs=1e-3)


def test_archive_bundle_screens_like_the_directory(tiny_bundle, tiny_bundle_archive, retina_jpeg):
    with Screener.from_bundle(tiny_bundle_archive, backend="onnxruntime") as s:
        from_archive = s.screen(retina_jpeg)
    with Screener.from_bundle(tiny_bundle, backend="onnxruntime") as s:
        from_dir = s.screen(retina_jpeg)
    assert from_archive.probabilities == pytest.approx(from_dir.probabilities, abs=1e-6)


def test_choose_conditions(tiny_bundle, retina_jpeg):
    with Screener.from_bundle(tiny_bundle, conditions=["glaucoma"]) as s:
        result = s.screen(retina_jpeg)
    assert list(result.probabilities) == ["glaucoma"] and list(result.referral) == ["glaucoma"]
    with pytest.raises(EdgeRetinaError, match="unknown condition 'scurvy'; this bundle reports diabetic_retinopathy, "):
        Screener.from_bundle(tiny_bundle, conditions=["scurvy"])


def test_a_condition_asked_for_twice_is_reported_once(tiny_bundle):
    with Screener.from_bundle(tiny_bundle, conditions=["glaucoma", "glaucoma"]) as s:
        assert s.conditions == ("glaucoma",)  # one table column, one CSV column


def test_bad_input_becomes_an_error_result(screener, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    result = screener.screen(empty)
    assert not result.screened and result.error_code == "empty_file" and "empty.jpg" in result.error
    missing = screener.screen(tmp_path / "nope.jpg")
    assert missing.error_code == "not_found"
    # Bytes (an archive member, a bridge request) are named in the message as the caller names them.
    named = screener.screen(b"\x89PNG\r\n\x1a\n", name="2019/IMG_0002.PNG")
    assert named.source == "2019/IMG_0002.PNG" and named.error.startswith("2019/IMG_0002.PNG: damaged PNG")


def test_ungradable_image_has_no_scores(screener):
    black = np.zeros((512, 512, 3), np.uint8)
    result = screener.screen(black)
    assert result.screened and result.gradable is False and result.ungradable_reason
    assert result.probabilities == {} and result.status == "ungradable"
