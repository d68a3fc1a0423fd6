"""FP32 ONNX -> ONNX Runtime INT8 QDQ model (static, per-channel weights, after ``quant_pre_process``).

Two choices here were measured on this machine (Xeon with AVX-512 VNNI, the ResNet-18 reference
encoder, batch 1, 2 threads; ``benchmarks/bench_ort_qdq_variants.py``, BENCHMARKS.md "INT8 engines"):

- Activations are unsigned (U8S8): ORT's x86 kernels are built around it (16 ms, against 35 ms with
  signed activations and 39 ms in FP32).
- ORT's CPU provider only runs a Conv in INT8 as ``QLinearConv``, which needs the Conv's *output*
  quantized too; with Q/DQ on the inputs alone the Conv dequantizes and runs in float, slower than
  FP32 (52 ms). So for CNNs (``quantize_outputs=None`` and no transformer ops in the graph)
  Conv/MatMul/Gemm outputs get a Q/DQ pair as well, and so do the ReLU/Clip activations after them:
  ORT's quantizer then folds each activation into the preceding Conv's output quantization (range
  [0, 6] for ReLU6 instead of the wide pre-activation range) and drops it, so every Conv fuses into
  ``QLinearConv`` with nothing in float between them. Measured on the default student
  (EfficientNet-Lite0, AMD EPYC without VNNI, batch 1, 1 thread; ``benchmarks/bench_int8_floor.py``'s
  score noise): all-INT8 noise 0.64 -> 0.27 of the scores' spread, engine 8.3 -> 6.1 ms (FP32 9.2).
  A residual Add then sits between DequantizeLinear and QuantizeLinear nodes, which ORT's graph
  optimiser fuses into ``QLinearAdd``; pooling and the L2 norm compute in float. Transformers keep the ViT-safe
  policy strictly (inputs only; ORT fuses an input-quantized MatMul into ``MatMulIntegerToFloat``), so
  LayerNorm, Softmax and GELU never see INT8.

``CalibMaxIntermediateOutputs`` is deliberately left unset: with it ORT 1.32 drops the collected
calibration data (``ValueError: No data is collected``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from calibration.reader import ArrayCalibrationReader
from converters.quantize.policy import QUANTIZED_OP_TYPES, is_transformer

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
ACTIVATION_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
#: Activations ORT's quantizer folds into the preceding Conv's output quantization (CNNs).
FOLDED_ACTIVATIONS = ("Relu", "Clip")


def quantize_onnxruntime(
    fp32_onnx: Path,
    out_path: Path,
    reader: CalibrationDataReader,
    *,
    nodes_to_exclude: Sequence[str] = (),
    per_channel: bool = True,
    calibration_method: str = "minmax",
    activation_type: str = "uint8",
    quantize_outputs: bool | None = None,
    reduce_range: bool = False,
) -> Path:
    """Write the QDQ model to ``out_path``; ``nodes_to_exclude`` (ONNX node names) stay in FP32.

    ``quantize_outputs``: also Q/DQ the outputs of Conv/MatMul/Gemm (None: for non-transformers).
    ``reduce_range``: 7-bit weights, for x86 CPUs without VNNI whose 16-bit intermediates can saturate.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if quantize_outputs is None:
        quantize_outputs = not is_transformer(onnx.load(str(fp32_onnx), load_external_data=False))
    extra_options = {} if quantize_outputs else {"OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES)}
    op_types = list(QUANTIZED_OP_TYPES) + (list(FOLDED_ACTIVATIONS) if quantize_outputs else [])
    with tempfile.TemporaryDirectory(prefix="edge-retina-ortq-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and graph optimisation first, as ORT's quantization guide requires. ORT's
        # symbolic shape inference crashes on the dynamo exporter's Expand (it cannot fold the shape
        # of the L2-norm's broadcast); ONNX's own shape inference covers these graphs, and the exporter
        # already records value shapes.
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        reader.rewind()
        quantize_static(
            str(prepared),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types,
            nodes_to_exclude=list(nodes_to_exclude),
            per_channel=per_channel,
            activation_type=ACTIVATION_TYPES[activation_type],
            weight_type=QuantType.QInt8,
            reduce_range=reduce_range,
            calibrate_method=CALIBRATION_METHODS[calibration_method],
            extra_options=extra_options,
        )
    return out_path


def build_int8(fp32_onnx: Path, out_dir: Path, calibration: np.ndarray, exclusions: Sequence[str],
               options: Mapping[str, Any]) -> list[Path]:
    """The registry's builder (``converters.quantize.registry``); option ``reduce_range``."""
    return [quantize_onnxruntime(fp32_onnx, Path(out_dir) / "model.onnx", ArrayCalibrationReader(calibration),
                                 nodes_to_exclude=exclusions, reduce_range=bool(options.get("reduce_range", False)))]
