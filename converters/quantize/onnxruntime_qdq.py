"""FP32 ONNX -> ONNX Runtime INT8 QDQ model (static, per-channel weights, after ``quant_pre_process``).

Signed INT8 activations and weights (S8S8) in QDQ format: ONNX Runtime's recommended default on
x86-64 and Arm CPUs. ``CalibMaxIntermediateOutputs`` is deliberately left unset: with it ORT 1.32
drops the collected calibration data (``ValueError: No data is collected``).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from converters.quantize.policy import QUANTIZED_OP_TYPES

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


def quantize_onnxruntime(
    fp32_onnx: Path,
    out_path: Path,
    reader: CalibrationDataReader,
    *,
    nodes_to_exclude: Sequence[str] = (),
    per_channel: bool = True,
    calibration_method: str = "minmax",
) -> Path:
    """Write the QDQ model to ``out_path``; ``nodes_to_exclude`` (ONNX node names) stay in FP32."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
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
            op_types_to_quantize=list(QUANTIZED_OP_TYPES),
            nodes_to_exclude=list(nodes_to_exclude),
            per_channel=per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[calibration_method],
            # Q/DQ on the inputs only: by default ORT also quantizes Conv/Gemm outputs, which would
            # put the ReLUs, the residual Adds and the L2 norm that follow them in INT8.
            extra_options={"OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES)},
        )
    return out_path
