"""NNCF post-training INT8 to an OpenVINO IR, run through the runtime's OpenVINO runner."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from quantize_fixtures import tiny_onnx

from converters.quantize.openvino_nncf import AccuracyControl, quantize_openvino
from converters.quantize.policy import quantizable_nodes
from edge_retina.backends import create_runner


def _fake_quantize_count(xml: Path) -> int:
    return xml.read_text().count('type="FakeQuantize"')


def test_int8_ir_runs_in_openvino(tiny_bundle, calibration_tensors, tmp_path):
    xml, binary = quantize_openvino(tiny_onnx(tiny_bundle), tmp_path / "int8" / "model.xml", calibration_tensors[:12])
    assert binary.is_file() and _fake_quantize_count(xml) > 0
    held_out = calibration_tensors[12:]
    with create_runner("onnxruntime", tiny_onnx(tiny_bundle), precision="fp32") as fp32, \
            create_runner("openvino", xml, precision="int8", threads=2) as int8:
        a, b = fp32.infer(held_out), int8.infer(held_out)
    cosine = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.98


def test_ignored_onnx_node_loses_its_quantizers(tiny_bundle, calibration_tensors, tmp_path):
    fp32 = tiny_onnx(tiny_bundle)
    all_int8, _ = quantize_openvino(fp32, tmp_path / "a" / "model.xml", calibration_tensors[:4])
    first = quantizable_nodes(onnx.load(str(fp32)))[0]
    partial, _ = quantize_openvino(fp32, tmp_path / "b" / "model.xml", calibration_tensors[:4], ignored_nodes=[first])
    assert 0 < _fake_quantize_count(partial) < _fake_quantize_count(all_int8)


def test_accuracy_control_calls_the_metric(tiny_bundle, calibration_tensors, tmp_path):
    seen = []

    def metric(embeddings: np.ndarray) -> float:
        seen.append(embeddings.shape)
        return float(embeddings[:, 0].mean())

    control = AccuracyControl(calibration_tensors[12:], metric, max_drop=1.0)
    xml, _ = quantize_openvino(tiny_onnx(tiny_bundle), tmp_path / "ac" / "model.xml", calibration_tensors[:8],
                               accuracy_control=control)
    assert xml.is_file() and seen and all(shape == (4, 32) for shape in seen)  # always the whole set
