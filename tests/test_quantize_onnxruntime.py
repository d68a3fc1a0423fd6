"""ONNX Runtime static INT8 (QDQ, per-channel) on the tiny bundle's encoder, calibrated on real photos."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from quantize_fixtures import (
    SHAPE_ONLY,
    dequantized_input_consumers,
    quantized_node_names,
    tiny_onnx,
)

from calibration import ArrayCalibrationReader
from converters.quantize.onnxruntime_qdq import quantize_onnxruntime
from converters.quantize.policy import QUANTIZED_OP_TYPES, quantizable_nodes
from edge_retina.backends import create_runner


@pytest.fixture(scope="module")
def quantized(tiny_bundle, calibration_tensors, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ort-int8") / "model.onnx"
    return quantize_onnxruntime(tiny_onnx(tiny_bundle), out, ArrayCalibrationReader(calibration_tensors[:12]))


@pytest.fixture(scope="module")
def inputs_only(tiny_bundle, calibration_tensors, tmp_path_factory) -> Path:
    """The strict ViT-safe policy (what transformers get automatically)."""
    out = tmp_path_factory.mktemp("ort-int8-inputs") / "model.onnx"
    return quantize_onnxruntime(tiny_onnx(tiny_bundle), out, ArrayCalibrationReader(calibration_tensors[:12]),
                                quantize_outputs=False)


def test_qdq_only_on_conv_matmul_gemm_inputs(inputs_only, tiny_bundle):
    model = onnx.load(str(inputs_only))
    consumers = dequantized_input_consumers(model)
    assert set(consumers) - SHAPE_ONLY <= set(QUANTIZED_OP_TYPES)
    assert set(quantizable_nodes(onnx.load(str(tiny_onnx(tiny_bundle))))) == quantized_node_names(model)
    weights = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.attribute]
    assert weights, "per-channel weights carry an axis attribute on their DequantizeLinear"


def test_int8_model_runs_in_onnxruntime_close_to_fp32(quantized, tiny_bundle, calibration_tensors):
    held_out = calibration_tensors[12:]
    with create_runner("onnxruntime", tiny_onnx(tiny_bundle), precision="fp32") as fp32, \
            create_runner("onnxruntime", quantized, precision="int8") as int8:
        a, b = fp32.infer(held_out), int8.infer(held_out)
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert b.shape == a.shape and cosine.min() > 0.98


def test_excluded_nodes_stay_in_float(tiny_bundle, calibration_tensors, tmp_path):
    fp32 = tiny_onnx(tiny_bundle)
    first = quantizable_nodes(onnx.load(str(fp32)))[0]
    out = quantize_onnxruntime(fp32, tmp_path / "m.onnx", ArrayCalibrationReader(calibration_tensors[:4]),
                               nodes_to_exclude=[first])
    names = quantized_node_names(onnx.load(str(out)))
    assert first not in names and names


def test_cnn_default_also_quantizes_conv_outputs_so_ort_can_fuse_qlinearconv(quantized, inputs_only):
    def quantize_linear_inputs(path: Path) -> set[str]:
        return {n.input[0] for n in onnx.load(str(path)).graph.node if n.op_type == "QuantizeLinear"}

    assert quantize_linear_inputs(inputs_only) < quantize_linear_inputs(quantized)
    consumers = dequantized_input_consumers(onnx.load(str(quantized)))
    assert {"Add", "LayerNormalization", "Softmax"}.isdisjoint(consumers)
