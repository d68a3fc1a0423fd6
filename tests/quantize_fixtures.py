"""Small real inputs for the calibration, quantization and accuracy-guard tests.

Real fundus photos from ../shared/datasets (eye4class: 256-400 px, quick to decode), a few per class,
and the tiny bundle's FP32 ONNX encoder as the model to quantize: mechanics, not accuracy.
"""
from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import onnx

from converters.quantize.policy import QUANTIZED_OP_TYPES

CLASSES = ("normal", "cataract", "glaucoma", "diabetic_retinopathy")


#: Shape reads only a tensor's shape, never its values: it may take the dequantized image.
SHAPE_ONLY = {"Shape"}


def calibration_images(shared_datasets: Path, tiny_bundle: Path) -> np.ndarray:
    """Four photos per eye4class label, prepared for the tiny bundle's encoder: the quantizers' input."""
    return prepared_tensors([Path(r["file"]) for r in eye4class_rows(shared_datasets, 4)], tiny_spec(tiny_bundle))


def eye4class_rows(shared_datasets: Path, per_class: int) -> list[dict[str, str]]:
    """The first ``per_class`` images of each eye4class label (in labels.csv order), interleaved."""
    root = shared_datasets / "eye4class"
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_class = {c: [r for r in rows if r["label"] == c][:per_class] for c in CLASSES}
    interleaved = [by_class[c][i] for i in range(per_class) for c in CLASSES]
    return [{"file": str(root / r["file"]), "label": r["label"]} for r in interleaved]


def write_csv(rows: list[dict[str, str]], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def tiny_onnx(tiny_bundle: Path) -> Path:
    return tiny_bundle / "engines" / "teacher-onnxruntime-fp32.onnx"


def prepared_tensors(paths: list[Path], spec) -> np.ndarray:
    from edge_retina.preprocess import Preprocessor

    preprocessor = Preprocessor(spec)
    return np.concatenate([preprocessor.prepare(p).tensor for p in paths]).astype(np.float32)


def tiny_spec(tiny_bundle: Path):
    from edge_retina.bundle import load_bundle

    return load_bundle(tiny_bundle).manifest.input


# What the ViT-safe policy (converters.quantize.policy) means for a graph, checked on quantized models.

def dequantized_input_consumers(model: onnx.ModelProto) -> Counter:
    """Op types that take a DequantizeLinear output as an input, with counts (the policy says: only
    Conv/MatMul/Gemm, and Q/DQ pairs feeding each other)."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return Counter(node.op_type for node in model.graph.node
                   if node.op_type != "QuantizeLinear" and dequantized.intersection(node.input))


def quantized_node_names(model: onnx.ModelProto) -> set[str]:
    """Names of the Conv/MatMul/Gemm nodes that take at least one dequantized input."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return {node.name for node in model.graph.node
            if node.op_type in QUANTIZED_OP_TYPES and dequantized.intersection(node.input)}
