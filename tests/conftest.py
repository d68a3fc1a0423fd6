"""Shared fixtures: real fundus photographs, the shared datasets, temporary images."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared/datasets beside the checkout (CI always has it); EDGE_RETINA_DATASETS overrides.
SHARED_DATASETS = Path(os.environ.get("EDGE_RETINA_DATASETS", REPO.parent / "shared" / "datasets"))


@pytest.fixture(scope="session", autouse=True)
def private_user_caches(tmp_path_factory):
    """Tests keep extracted bundles and compiled engines in caches of their own: a test run leaves the
    user's ~/.cache/edge-retina as it found it (runs before this left ~900 entries there), and a cache
    warmed by earlier runs cannot hide a cold-start bug."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(autouse=True)
def signal_handlers_restored():
    """Each test leaves the SIGINT/SIGTERM handlers as it found them: the bridge's commands set their
    own (stop the server), and one left behind by a test of `bridge serve` made a later test's real
    Ctrl-C stop a server that no longer ran instead of raising KeyboardInterrupt."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in handlers.items():
        if handler is not None:  # None: installed outside Python, which Python cannot put back
            signal.signal(signum, handler)


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not (SHARED_DATASETS / "README.md").is_file():
        pytest.skip(f"real fundus datasets not found at {SHARED_DATASETS} (set EDGE_RETINA_DATASETS)")
    return SHARED_DATASETS


@pytest.fixture(scope="session")
def retina_rgb() -> np.ndarray:
    """A real 1411x1411 colour fundus photograph (scikit-image, CC0), RGB uint8."""
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.retina()


@pytest.fixture(scope="session")
def retina_jpeg(tmp_path_factory, retina_rgb) -> Path:
    import cv2

    path = tmp_path_factory.mktemp("retina") / "retina.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(retina_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """Directory bundle (ONNX Runtime + OpenVINO FP32) of a small random encoder: mechanics only."""
    from tiny_bundle import build_tiny_bundle

    root = tmp_path_factory.mktemp("tiny-bundle")
    return build_tiny_bundle(root / "bundle", archive=root / "bundle.erb.tar")


@pytest.fixture(scope="session")
def tiny_bundle_archive(tiny_bundle) -> Path:
    return tiny_bundle.parent / "bundle.erb.tar"


@pytest.fixture(scope="module")
def screener(tiny_bundle):
    """A Screener of the tiny bundle on ONNX Runtime, one thread (a module's tests share it)."""
    from edge_retina.screener import Screener

    with Screener.from_bundle(tiny_bundle, backend="onnxruntime", threads=1) as s:
        yield s


@pytest.fixture(scope="session")
def calibration_tensors(shared_datasets, tiny_bundle) -> np.ndarray:
    """Calibration and held-out tensors the INT8 quantizer tests share (computed once)."""
    from quantize_fixtures import calibration_images

    return calibration_images(shared_datasets, tiny_bundle)
