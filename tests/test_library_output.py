"""Third-party output while quantizing: none unless -v (``edge_retina.cli.library_output``).

Each quantizer runs uncached here on a tiny encoder, as in a fresh clone's first ``make demo``."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx_models import make_tiny_encoder_onnx

from converters.quantize.registry import build_engine
from edge_retina.cli.library_output import quiet_libraries


@pytest.fixture(scope="module")
def encoder_and_calibration(tmp_path_factory):
    onnx_path = make_tiny_encoder_onnx(tmp_path_factory.mktemp("library-output") / "encoder.onnx")
    return onnx_path, np.random.default_rng(0).normal(size=(8, 3, 64, 64)).astype(np.float32)


def test_nncf_and_onnxruntime_quantization_print_nothing_in_a_quiet_command(encoder_and_calibration, tmp_path, capfd):
    onnx_path, calibration = encoder_and_calibration
    with quiet_libraries():
        for backend in ("onnxruntime", "openvino"):
            build_engine(backend, "int8", onnx_path, tmp_path / backend, calibration)
    assert capfd.readouterr() == ("", "")
    build_engine("openvino", "int8", onnx_path, tmp_path / "verbose", calibration)
    assert "Statistics collection" in capfd.readouterr().out  # NNCF's bar, which -v shows


def test_modelopt_worker_output_is_logged_not_printed(encoder_and_calibration, tmp_path, capfd, caplog):
    pytest.importorskip("modelopt", reason="nvidia-modelopt (convert extra) not installed")
    onnx_path, calibration = encoder_and_calibration
    with caplog.at_level(logging.INFO, logger="modelopt"):
        build_engine("tensorrt", "int8", onnx_path, tmp_path, calibration)
    assert capfd.readouterr() == ("", "")
    # ONNX Runtime's entropy calibrator prints its steps in the worker: INFO records here, shown with -v.
    assert any("Collecting tensor data" in r.getMessage() for r in caplog.records if r.name == "modelopt")
