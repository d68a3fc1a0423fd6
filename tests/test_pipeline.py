"""The screening pipeline: same results as one-at-a-time screening, in input order, errors per photo,
a bounded number of photos in flight."""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from edge_retina.pipeline import ScreeningPipeline, Throughput
from edge_retina.screener import Result, Screener


@pytest.fixture(scope="module")
def photos(tmp_path_factory, retina_rgb):
    """Six different small photos (crops and flips of the real one), a corrupt file and a missing one."""
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(6):
        image = retina_rgb[i * 40:, i * 30:][:, :: (-1 if i % 2 else 1)]
        small = cv2.resize(image, (320, 320), interpolation=cv2.INTER_AREA)
        path = folder / f"photo{i}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        paths.append(str(path))
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return paths[:3] + [str(corrupt), str(folder / "missing.jpg")] + paths[3:]


@pytest.mark.parametrize("workers, max_batch", [(1, 1), (2, 1), (3, 4)])
def test_results_match_one_at_a_time_and_keep_input_order(screener, photos, workers, max_batch):
    expected = [screener.screen(p) for p in photos]
    with ScreeningPipeline(screener, workers=workers, max_batch=max_batch) as pipeline:
        got = list(pipeline.screen(photos))
        assert pipeline.throughput.images == len(photos) and pipeline.throughput.images_per_s > 0
    assert [r.source for r in got] == photos
    assert [r.status for r in got] == [r.status for r in expected]
    assert [r.error_code for r in got] == [r.error_code for r in expected]
    assert {"corrupt", "not_found"} <= {r.error_code for r in got}
    for a, b in zip(got, expected):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)


def test_memory_is_bounded_by_the_queue_limit(screener, photos):
    """However long the input, the feeder takes at most ``queue_limit`` photos beyond those consumed."""
    taken = 0
    lock = threading.Lock()

    def endless():
        nonlocal taken
        while True:
            with lock:
                taken += 1
            yield photos[taken % 3]

    with ScreeningPipeline(screener, workers=2, queue_limit=4) as pipeline:
        results = pipeline.screen(endless())
        for consumed in range(1, 13):
            next(results)
            with lock:
                assert taken - consumed <= pipeline.queue_limit
        results.close()


def test_settled_items_pass_through_in_order(screener, photos):
    items = [("ok", photos[0]), ("refused", None), ("ok", photos[1])]

    def source(item):
        if item[1] is None:
            return Result("refused", error="pattern matched no files", error_code="no_match")
        return item[1]

    with ScreeningPipeline(screener, workers=2) as pipeline:
        out = list(pipeline.run(items, source=source, name=lambda item: item[0]))
    assert [item for item, _ in out] == items
    assert [r.status != "error" for _, r in out] == [True, False, True]
    assert out[1][1].error_code == "no_match" and out[1][1].source == "refused"


def test_a_failing_input_iterable_is_raised_in_the_caller(screener, photos):
    def broken():
        yield photos[0]
        raise RuntimeError("listing failed")

    with ScreeningPipeline(screener, workers=2) as pipeline, pytest.raises(RuntimeError, match="listing failed"):
        list(pipeline.screen(broken()))


def test_arrays_and_bytes_are_screened_too(screener, retina_rgb):
    small = np.ascontiguousarray(retina_rgb[::4, ::4])
    with ScreeningPipeline(screener, workers=2) as pipeline:
        (result,) = pipeline.screen([small])
    assert result.probabilities == pytest.approx(screener.screen(small).probabilities, abs=1e-5)


def test_throughput_line():
    assert Throughput(120, 2.0).describe() == "120 images in 2.00 s, 60.0 images/s"
    assert Throughput(1, 0.5).describe() == "1 image in 0.50 s, 2.0 images/s"


def test_contained_errors_cost_only_their_own_item(screener, photos, monkeypatch):
    """With contain_errors (the bridge), an exception while preparing one item, or from the engine,
    becomes those items' error Results; the run and the other items go on."""
    original = screener.preprocess

    def preprocess(source, **kwargs):
        if source == photos[1]:
            raise ValueError("a poison image")
        return original(source, **kwargs)

    monkeypatch.setattr(screener, "preprocess", preprocess)
    with ScreeningPipeline(screener, workers=2, contain_errors=True) as pipeline:
        results = list(pipeline.screen(photos[:3]))
    assert [r.error_code for r in results] == [None, "internal", None]
    assert "ValueError: a poison image" in results[1].error and results[1].source == photos[1]

    monkeypatch.setattr(screener, "complete", lambda staged: (_ for _ in ()).throw(RuntimeError("engine lost")))
    with ScreeningPipeline(screener, workers=2, contain_errors=True) as pipeline:
        results = list(pipeline.screen([photos[0], photos[3]]))  # a photo and a corrupt file
    assert [r.error_code for r in results] == ["internal", "corrupt"]
    with ScreeningPipeline(screener, workers=2) as pipeline, pytest.raises(RuntimeError, match="engine lost"):
        list(pipeline.screen(photos[:1]))
