"""FP32 ONNX -> Q/DQ ONNX for TensorRT explicit quantization (NVIDIA ModelOpt ONNX PTQ), and the
engine-build recipe that runs on the device.

ModelOpt calibrates on the CPU here (``calibration_eps=["cpu"]``) and writes Q/DQ nodes on
Conv/MatMul/Gemm inputs only (the ViT-safe policy). TensorRT engines are specific to a GPU model
and TensorRT version, so the engine is built on the device from this ONNX: by the runtime's
``TensorRTRunner`` (strongly typed network, no precision flags, timing cache, engines cached per
GPU and TensorRT version), or by ``trtexec`` where Python bindings are missing. Implicit-INT8
calibrators are deprecated since TensorRT 10.1 and gone in 11; nothing here uses them.

Jetson Xavier (JetPack 5.1, TensorRT 8.5) has no strongly typed networks: the same Q/DQ ONNX builds
there with ``--int8 --fp16`` (explicit quantization has existed since TensorRT 8.0), layers outside
Q/DQ pairs then run in FP16 at the builder's choice, as ``trtexec_command`` spells out.
"""
from __future__ import annotations

import multiprocessing
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
                              high_precision: str, calibration_method: str) -> None:
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
    ``quantize_static`` fails ("Quantization parameters are not specified for param image").
    """
    if high_precision not in HIGH_PRECISION_TYPES:
        raise ValueError(f"high_precision must be one of {HIGH_PRECISION_TYPES}, got {high_precision!r}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-retina-modelopt-") as tmp:
        tensors_file = Path(tmp) / "calibration.npy"
        np.save(tensors_file, np.ascontiguousarray(calibration_tensors, dtype=np.float32))
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(_quantize_in_this_process, str(fp32_onnx), str(out_path), str(tensors_file),
                        list(nodes_to_exclude), high_precision, calibration_method).result()
    return out_path


def build_int8(fp32_onnx: Path, out_dir: Path, calibration: np.ndarray, exclusions: Sequence[str],
               options: Mapping[str, Any]) -> list[Path]:
    """The registry's builder (``converters.quantize.registry``); option ``high_precision``."""
    return [quantize_tensorrt_qdq(fp32_onnx, Path(out_dir) / "model.onnx", calibration, nodes_to_exclude=exclusions,
                                  high_precision=options.get("high_precision", "fp32"))]


def build_engine_on_device(qdq_onnx: Path, *, cache_dir: Path | None = None, device: str = "GPU",
                           max_batch: int = 8) -> Path:
    """On the device: build (or reuse) the engine for the local GPU and TensorRT version; its path.

    The runtime's TensorRT runner does the build and caching; this only asks it to.
    """
    from edge_retina.backends import create_runner

    with create_runner("tensorrt", qdq_onnx, precision="int8", device=device, cache_dir=cache_dir,
                       max_batch=max_batch) as runner:
        return Path(runner.info()["engine_path"])


def trtexec_command(qdq_onnx: Path, engine: Path, timing_cache: Path, *, tensorrt_major: int = 10,
                    max_batch: int = 8, input_shape: tuple[int, int, int] = (3, 224, 224)) -> list[str]:
    """The same build with ``trtexec`` (devices without TensorRT's Python bindings).

    TensorRT >= 10: a strongly typed network, precisions from the Q/DQ nodes, no precision flags.
    TensorRT 8.5 (Jetson Xavier, JetPack 5.1): no strongly typed mode; ``--int8 --fp16`` let the
    builder use the Q/DQ scales and run the rest in FP16.
    """
    shape = "x".join(str(d) for d in input_shape)
    command = [
        "trtexec", f"--onnx={qdq_onnx}", f"--saveEngine={engine}", f"--timingCacheFile={timing_cache}",
        f"--minShapes={INPUT_NAME}:1x{shape}", f"--optShapes={INPUT_NAME}:1x{shape}",
        f"--maxShapes={INPUT_NAME}:{max_batch}x{shape}",
    ]
    command += ["--stronglyTyped"] if tensorrt_major >= 10 else ["--int8", "--fp16"]
    return command
