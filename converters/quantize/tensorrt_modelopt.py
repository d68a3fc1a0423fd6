"""FP32 ONNX -> Q/DQ ONNX for TensorRT explicit quantization (NVIDIA ModelOpt ONNX PTQ). The engine
is built on the device (``edge_retina.backends.tensorrt_engine_cache``).

ModelOpt calibrates on the CPU here (``calibration_eps=["cpu"]``) and writes Q/DQ nodes on
Conv/MatMul/Gemm inputs only (the ViT-safe policy). TensorRT engines are specific to a GPU model
and TensorRT version, so the engine is built on the device from this ONNX: by the runtime's
``TensorRTRunner`` (strongly typed network, no precision flags, timing cache, engines cached per
GPU and TensorRT version), or by ``trtexec`` where Python bindings are missing. Implicit-INT8
calibrators are deprecated since TensorRT 10.1 and gone in 11; nothing here uses them.

Jetson Xavier (JetPack 5.1, TensorRT 8.5) has no strongly typed networks: the same Q/DQ ONNX builds
there with ``--int8 --fp16`` (explicit quantization has existed since TensorRT 8.0), layers outside
Q/DQ pairs then run in FP16 at the builder's choice, as the runtime's ``trtexec_command`` spells out.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from converters.export.onnx_fp32 import INPUT_NAME
from converters.quantize.policy import QUANTIZED_OP_TYPES

#: "fp32" keeps every non-quantized layer in FP32 (what parity is checked against on this CPU-only
#: host); "fp16" converts them to FP16, faster on the GPU, and is checked the same way.
HIGH_PRECISION_TYPES = ("fp32", "fp16")


def _quantize_in_this_process(fp32_onnx: str, out_path: str, tensors_file: str, nodes_to_exclude: list[str],
                              high_precision: str, calibration_method: str, output_file: str) -> None:
    # Everything this worker prints (ONNX Runtime's calibrator prints, ModelOpt's tqdm bars, C++ logs)
    # goes to ``output_file``: the parent logs it, so it shows with -v only (edge_retina.cli.library_output).
    with open(output_file, "w") as output:
        os.dup2(output.fileno(), 1)
        os.dup2(output.fileno(), 2)
    from modelopt.onnx.quantization import quantize

    quantize(
        fp32_onnx,
        quantize_mode="int8",
        calibration_data={INPUT_NAME: np.load(tensors_file)},
        calibration_method=calibration_method,
        calibration_eps=["cpu"],
        op_types_to_quantize=list(QUANTIZED_OP_TYPES),
        nodes_to_exclude=nodes_to_exclude or None,
        high_precision_dtype=high_precision,
        output_path=out_path,
        log_level="WARNING",
    )


def quantize_tensorrt_qdq(
    fp32_onnx: Path,
    out_path: Path,
    calibration_tensors: np.ndarray,
    *,
    nodes_to_exclude: Sequence[str] = (),
    high_precision: str = "fp32",
    calibration_method: str = "entropy",
) -> Path:
    """Write the Q/DQ ONNX to ``out_path``; ``nodes_to_exclude`` (ONNX node names) stay unquantized.

    ModelOpt runs in a separate (spawned) process: importing it patches ONNX Runtime's quantization
    modules process-wide (``modelopt.onnx.quantization.ort_patching``), after which ONNX Runtime's own
    ``quantize_static`` fails ("Quantization parameters are not specified for param image"). What that
    process prints is logged here at INFO, under "modelopt".
    """
    if high_precision not in HIGH_PRECISION_TYPES:
        raise ValueError(f"high_precision must be one of {HIGH_PRECISION_TYPES}, got {high_precision!r}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-retina-modelopt-") as tmp:
        tensors_file, output_file = Path(tmp) / "calibration.npy", Path(tmp) / "output.txt"
        np.save(tensors_file, np.ascontiguousarray(calibration_tensors, dtype=np.float32))
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
                pool.submit(_quantize_in_this_process, str(fp32_onnx), str(out_path), str(tensors_file),
                            list(nodes_to_exclude), high_precision, calibration_method, str(output_file)).result()
        finally:
            if output_file.is_file() and output_file.stat().st_size:
                logging.getLogger("modelopt").info("%s", output_file.read_text(errors="replace").rstrip())
    return out_path


def build_int8(fp32_onnx: Path, out_dir: Path, calibration: np.ndarray, exclusions: Sequence[str],
               options: Mapping[str, Any]) -> list[Path]:
    """The registry's builder (``converters.quantize.registry``); option ``high_precision``."""
    return [quantize_tensorrt_qdq(fp32_onnx, Path(out_dir) / "model.onnx", calibration, nodes_to_exclude=exclusions,
                                  high_precision=options.get("high_precision", "fp32"))]
