"""FP32 ONNX -> the floating-point engines: FP32 and FP16, for ONNX (ONNX Runtime, TensorRT) and OpenVINO.

Builders with the interface of ``converters.quantize.registry`` (calibration, exclusions and options
are not used: nothing here is calibrated).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from converters.export.openvino_ir import onnx_to_openvino_ir


def onnx_fp32(fp32_onnx: Path, out_dir: Path, calibration: np.ndarray | None, exclusions: Sequence[str],
              options: Mapping[str, Any]) -> list[Path]:
    """The FP32 ONNX itself (a copy the output folder owns): ONNX Runtime runs it, TensorRT builds from it."""
    return [Path(shutil.copyfile(fp32_onnx, Path(out_dir) / "model.onnx"))]


def onnx_fp16(fp32_onnx: Path, out_dir: Path, calibration: np.ndarray | None, exclusions: Sequence[str],
              options: Mapping[str, Any]) -> list[Path]:
    """FP16 weights and compute with FP32 input/output (ONNX Runtime's converter; LayerNorm stays one op)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out = Path(out_dir) / "model.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(fp32_onnx)), keep_io_types=True), str(out))
    return [out]


def openvino_fp32(fp32_onnx: Path, out_dir: Path, calibration: np.ndarray | None, exclusions: Sequence[str],
                  options: Mapping[str, Any]) -> list[Path]:
    return onnx_to_openvino_ir(fp32_onnx, Path(out_dir) / "model.xml")


def openvino_fp16(fp32_onnx: Path, out_dir: Path, calibration: np.ndarray | None, exclusions: Sequence[str],
                  options: Mapping[str, Any]) -> list[Path]:
    """An IR with FP16 weights (OpenVINO's own compression)."""
    import openvino as ov

    xml = Path(out_dir) / "model.xml"
    ov.save_model(ov.convert_model(str(fp32_onnx)), str(xml), compress_to_fp16=True)
    return [xml, xml.with_suffix(".bin")]
