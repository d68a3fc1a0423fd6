"""TensorRT explicit quantization: a ModelOpt Q/DQ ONNX, validated here in ONNX Runtime (and polygraphy);
the engine build itself needs a GPU with TensorRT and is skipped elsewhere."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

if importlib.util.find_spec("modelopt") is None:
    pytest.skip("nvidia-modelopt (convert extra) not installed", allow_module_level=True)

from quantize_fixtures import SHAPE_ONLY, dequantized_input_consumers, tiny_onnx  # noqa: E402

from converters.quantize.policy import QUANTIZED_OP_TYPES  # noqa: E402
from converters.quantize.tensorrt_modelopt import quantize_tensorrt_qdq  # noqa: E402
from edge_retina.backends import create_runner  # noqa: E402
from edge_retina.backends.tensorrt_engine_cache import build_engine_on_device  # noqa: E402


@pytest.fixture(scope="module")
def qdq_onnx(tiny_bundle, calibration_tensors, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trt-qdq") / "model.onnx"
    return quantize_tensorrt_qdq(tiny_onnx(tiny_bundle), out, calibration_tensors[:12])


def test_qdq_onnx_follows_the_policy_and_runs_in_onnxruntime(qdq_onnx, tiny_bundle, calibration_tensors):
    consumers = dequantized_input_consumers(onnx.load(str(qdq_onnx)))
    assert consumers and set(consumers) - SHAPE_ONLY <= set(QUANTIZED_OP_TYPES)
    held_out = calibration_tensors[12:]
    with create_runner("onnxruntime", tiny_onnx(tiny_bundle), precision="fp32") as fp32, \
            create_runner("onnxruntime", qdq_onnx, precision="int8") as qdq:
        a, b = fp32.infer(held_out), qdq.infer(held_out)
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.98


def test_polygraphy_runs_the_qdq_onnx_with_onnxruntime(qdq_onnx):
    polygraphy = shutil.which("polygraphy") or str(Path(sys.executable).with_name("polygraphy"))
    if not Path(polygraphy).is_file():
        pytest.skip("polygraphy CLI not installed")
    proc = subprocess.run([polygraphy, "run", str(qdq_onnx), "--onnxrt", "--input-shapes", "image:[1,3,96,96]"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASSED" in proc.stdout + proc.stderr


def test_engine_build_on_the_device(qdq_onnx, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed here: engines are built on the device")
    engine = build_engine_on_device(qdq_onnx, cache_dir=tmp_path)
    assert engine.is_file() and engine.stat().st_size > 0


def test_modelopt_stays_out_of_this_process_so_ort_quantization_still_works(qdq_onnx, tiny_bundle,
                                                                            calibration_tensors, tmp_path):
    """ModelOpt patches ONNX Runtime's quantizer when imported; it runs in a child process instead."""
    from calibration import ArrayCalibrationReader
    from converters.quantize.onnxruntime_qdq import quantize_onnxruntime

    assert "modelopt.onnx.quantization" not in sys.modules
    out = quantize_onnxruntime(tiny_onnx(tiny_bundle), tmp_path / "ort.onnx",
                               ArrayCalibrationReader(calibration_tensors[:4]))
    assert out.is_file()
