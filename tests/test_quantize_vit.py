"""The ViT-safe policy on a real (tiny) ViT graph: the CLIP adapters' open_clip tower, exported by the
project's exporter and quantized by both INT8 builders of the registry.

Only the inputs of Conv/MatMul/Gemm may be quantized: LayerNorm, Softmax, GELU and the residual Adds
read float activations. The other quantizer tests use a CNN, which never reaches the transformer paths
(NNCF's ``ModelType.TRANSFORMER``, ONNX Runtime's inputs-only Q/DQ chosen automatically).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from quantize_fixtures import SHAPE_ONLY, dequantized_input_consumers, quantized_node_names

from converters.export.onnx_fp32 import export_onnx
from converters.quantize.policy import QUANTIZED_OP_TYPES, is_transformer, quantizable_nodes
from converters.quantize.registry import build_engine
from converters.teachers.clip import NormalisedImageEncoder, build_openai_vit

from open_clip.model import CLIPVisionCfg  # noqa: E402  (after converters.teachers.clip: torchvision first)

#: What may read an NNCF FakeQuantize in the OpenVINO IR: the policy's ops under OpenVINO's names
#: (MatMul/Gemm -> MatMul, Conv -> Convolution; the attention's two MatMuls are fused into
#: ScaledDotProductAttention, and its keys and values are quantized before the Gather that splits them
#: off the fused q/k/v projection), plus the image's ShapeOf, which reads only the shape.
OPENVINO_QUANTIZED_OPS = {"MatMul", "Convolution", "ScaledDotProductAttention", "Gather", "ShapeOf"}


@pytest.fixture(scope="module")
def vit_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    tower = build_openai_vit(CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=32),
                             output_dim=16)
    return export_onnx(NormalisedImageEncoder(tower), (32, 32), tmp_path_factory.mktemp("vit") / "fp32.onnx")


@pytest.fixture(scope="module")
def calibration() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)


def test_exported_vit_is_recognised_as_a_transformer(vit_onnx):
    assert is_transformer(onnx.load(str(vit_onnx)))


def test_onnxruntime_int8_quantizes_only_linear_inputs(vit_onnx, calibration, tmp_path):
    model = onnx.load(str(build_engine("onnxruntime", "int8", vit_onnx, tmp_path, calibration)[0]))
    assert set(dequantized_input_consumers(model)) - SHAPE_ONLY <= set(QUANTIZED_OP_TYPES)
    assert quantized_node_names(model) == set(quantizable_nodes(onnx.load(str(vit_onnx))))
    # Inputs only: no Conv/MatMul/Gemm output is re-quantized (that is the CNN-only exception).
    linear_outputs = {out for n in model.graph.node if n.op_type in QUANTIZED_OP_TYPES for out in n.output}
    assert not any(n.input[0] in linear_outputs for n in model.graph.node if n.op_type == "QuantizeLinear")


def test_openvino_int8_quantizes_only_linear_inputs(vit_onnx, calibration, tmp_path):
    import openvino as ov

    xml = build_engine("openvino", "int8", vit_onnx, tmp_path, calibration)[0]
    consumers = {target.get_node().get_type_name()
                 for op in ov.Core().read_model(str(xml)).get_ordered_ops() if op.get_type_name() == "FakeQuantize"
                 for target in op.output(0).get_target_inputs()}
    assert {"MatMul", "Convolution"} <= consumers <= OPENVINO_QUANTIZED_OPS
