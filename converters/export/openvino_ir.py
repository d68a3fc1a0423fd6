"""FP32 ONNX -> OpenVINO IR (.xml + .bin), kept in FP32.

``openvino.save_model`` compresses weights to FP16 by default; an FP32 reference engine must not be,
so ``compress_to_fp16=False``. (INT8 IR comes from NNCF, in the quantization converters.)
"""
from __future__ import annotations

from pathlib import Path

import openvino as ov


def onnx_to_openvino_ir(onnx_path: Path, xml_path: Path) -> list[Path]:
    """Convert and save; returns the files written (the .xml first)."""
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return [xml_path, xml_path.with_suffix(".bin")]
