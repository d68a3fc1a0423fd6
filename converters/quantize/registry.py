"""Engine builders by (backend, precision): one interface for every conversion of the FP32 ONNX.

Every builder is called as ``builder(fp32_onnx, out_dir, calibration, exclusions, options)`` and returns
the files it wrote under ``out_dir`` (an OpenVINO IR: the .xml first):

- ``calibration``: (N, 3, H, W) float32 model inputs (INT8 only; None otherwise);
- ``exclusions``: ONNX node names to leave in floating point (the accuracy guard's layer exclusion);
- ``options``: per-target settings (device profiles' converter options): ``reduce_range`` for ONNX
  Runtime INT8, ``high_precision`` for TensorRT INT8, ``accuracy_control`` for OpenVINO INT8.

Modules are imported when a builder is asked for, like the runtime's runner registry: NNCF, OpenVINO
and ModelOpt take seconds to import and a conversion rarely needs all of them.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

Builder = Callable[[Path, Path, "np.ndarray | None", Sequence[str], Mapping[str, Any]], list[Path]]

_FLOAT = "converters.quantize.float_engines"
# (backend, precision) -> (module, function)
_BUILDERS = {
    ("onnxruntime", "fp32"): (_FLOAT, "onnx_fp32"),
    ("onnxruntime", "fp16"): (_FLOAT, "onnx_fp16"),
    ("onnxruntime", "int8"): ("converters.quantize.onnxruntime_qdq", "build_int8"),
    ("openvino", "fp32"): (_FLOAT, "openvino_fp32"),
    ("openvino", "fp16"): (_FLOAT, "openvino_fp16"),
    ("openvino", "int8"): ("converters.quantize.openvino_nncf", "build_int8"),
    ("tensorrt", "fp32"): (_FLOAT, "onnx_fp32"),
    ("tensorrt", "fp16"): (_FLOAT, "onnx_fp16"),
    ("tensorrt", "int8"): ("converters.quantize.tensorrt_modelopt", "build_int8"),
}
#: Revision of what each builder makes: part of the converter's engine cache key, so a changed
#: recipe rebuilds cached engines. Bump it when a builder's output changes.
BUILDER_REVISIONS = {("onnxruntime", "int8"): 2,  # 2: ReLU/Clip folded into Conv outputs
                     ("openvino", "int8"): 3}  # 2: NNCF's overflow fix in every layer; 3: full bias correction
#: The library that made an engine, beside the common toolchain, recorded in its manifest entry.
_QUANTIZERS = {("openvino", "int8"): "nncf", ("tensorrt", "int8"): "nvidia-modelopt"}
#: Where this host runs each backend's artefacts to check them: a TensorRT engine is built on the
#: device, so its (Q/DQ) ONNX is checked in ONNX Runtime here.
_HOST_BACKEND = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "onnxruntime"}


def builder(backend: str, precision: str) -> Builder:
    if (backend, precision) not in _BUILDERS:
        raise ValueError(f"no builder for {backend} {precision}; there are {sorted(_BUILDERS)}")
    module, name = _BUILDERS[backend, precision]
    return getattr(importlib.import_module(module), name)


def build_engine(backend: str, precision: str, fp32_onnx: Path, out_dir: Path, calibration: np.ndarray | None = None,
                 exclusions: Sequence[str] = (), options: Mapping[str, Any] | None = None) -> list[Path]:
    """``backend``'s engine at ``precision`` from ``fp32_onnx``, written under ``out_dir``; its files."""
    if precision == "int8" and calibration is None:
        raise ValueError("INT8 needs calibration tensors")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return builder(backend, precision)(Path(fp32_onnx), Path(out_dir), calibration, list(exclusions), options or {})


def builder_revision(backend: str, precision: str) -> int:
    return BUILDER_REVISIONS.get((backend, precision), 1)


def host_backend(backend: str) -> str:
    """The backend that runs ``backend``'s artefacts on this host (for the guard and the parity report)."""
    return _HOST_BACKEND[backend]


def quantizer_versions(backend: str, precision: str) -> dict[str, str]:
    """{library: version} of what quantized this engine (empty for floating-point engines)."""
    from importlib.metadata import version

    library = _QUANTIZERS.get((backend, precision))
    return {} if library is None else {library: version(library)}
