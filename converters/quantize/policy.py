"""The ViT-safe quantization policy: quantize the inputs of Conv, MatMul and Gemm, nothing else.

Residual Adds, LayerNorm, Softmax and GELU stay in higher precision: INT8 on those is what
collapses vision transformers (a default-INT8 ViT-B/16 fell to ~0-5 % top-1 on a Jetson Orin Nano,
while Linear-only INT8 kept 84.5 % against 85.2 % in FP32, as the issue cites). LayerNorm must also
stay one fused op (the FP32 exporter keeps it so; a decomposed LayerNorm overflows in FP16).

One measured exception, for CNN encoders on ONNX Runtime's CPU provider only: Conv outputs get a
Q/DQ pair too, because that provider runs INT8 Conv only as QLinearConv (see ``onnxruntime_qdq``).
The ops after the Conv still compute in float.
"""
from __future__ import annotations

import onnx

QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
#: Op types that mark an encoder as a transformer (NNCF then uses its transformer scheme).
TRANSFORMER_MARKERS = ("LayerNormalization", "Softmax", "Attention", "MultiHeadAttention")


def is_transformer(model: onnx.ModelProto) -> bool:
    return any(node.op_type in TRANSFORMER_MARKERS for node in model.graph.node)


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes the policy allows to run in INT8, in graph order."""
    return [node.name for node in model.graph.node if node.op_type in QUANTIZED_OP_TYPES]
