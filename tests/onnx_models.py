"""Tiny ONNX image encoders built with ``onnx.helper`` (no torch), for tests that need a real model.

The graph mimics what a bundle's encoder does at the edges: float32 NCHW image in, L2-normalised
(N, D) float32 embedding out, so every backend sees the same I/O contract as a real export.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT_NAME = "image"
OUTPUT_NAME = "embedding"
# Opset 17 / IR 8: old enough for every runtime we target (ORT >= 1.18, OpenVINO >= 2024.4, TRT 10).
OPSET = 17
IR_VERSION = 8
CONV_CHANNELS = 8


def make_tiny_encoder_onnx(
    path: Path,
    *,
    input_size: tuple[int, int] = (64, 64),
    embed_dim: int = 16,
    dynamic_batch: bool = True,
    seed: int = 0,
) -> Path:
    """Write Conv -> ReLU -> GlobalAveragePool -> Flatten -> MatMul -> L2-normalise to ``path``.

    ``input_size`` is (height, width). With ``dynamic_batch`` the batch axis is symbolic ("batch"),
    otherwise it is fixed at 1. The weights come from ``seed`` so two calls give identical models.
    """
    path = Path(path)
    rng = np.random.default_rng(seed)
    conv_weight = rng.normal(0.0, 0.3, size=(CONV_CHANNELS, 3, 3, 3)).astype(np.float32)
    conv_bias = rng.normal(0.0, 0.1, size=(CONV_CHANNELS,)).astype(np.float32)
    projection = rng.normal(0.0, 0.5, size=(CONV_CHANNELS, embed_dim)).astype(np.float32)

    batch_dim: str | int = "batch" if dynamic_batch else 1
    height, width = input_size
    image = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch_dim, 3, height, width])
    embedding = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch_dim, embed_dim])
    nodes = [
        helper.make_node(
            "Conv", [INPUT_NAME, "conv_weight", "conv_bias"], ["conv"], kernel_shape=[3, 3], strides=[2, 2],
            pads=[1, 1, 1, 1],
        ),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "projection"], ["projected"]),
        helper.make_node("LpNormalization", ["projected"], [OUTPUT_NAME], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_encoder",
        [image],
        [embedding],
        initializer=[
            numpy_helper.from_array(conv_weight, "conv_weight"),
            numpy_helper.from_array(conv_bias, "conv_bias"),
            numpy_helper.from_array(projection, "projection"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION, producer_name="edge-retina-tests"
    )
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path
