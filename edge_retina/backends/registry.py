"""Backend names, which of them this machine can run, and building a runner by name.

Runner modules import their inference library at module level, so they are imported here only when
asked for: importing ``edge_retina.backends`` stays cheap on a device (OpenVINO and TensorRT take
seconds to import) and never needs a library the device does not have.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from edge_retina.backends.base import Runner
from edge_retina.engines import BACKENDS
from edge_retina.errors import BackendError


# backend -> (runner module, runner class)
_RUNNERS = {
    "onnxruntime": ("edge_retina.backends.onnxruntime_runner", "OnnxRuntimeRunner"),
    "openvino": ("edge_retina.backends.openvino_runner", "OpenVinoRunner"),
    "tensorrt": ("edge_retina.backends.tensorrt_runner", "TensorRTRunner"),
}

# backend -> the libraries it needs; each entry lists importable alternatives (any one will do).
_LIBRARIES: dict[str, tuple[tuple[str, ...], ...]] = {
    "onnxruntime": (("onnxruntime",),),
    "openvino": (("openvino",),),
    "tensorrt": (("tensorrt",), ("cuda.bindings.runtime", "cuda.cudart")),
}

_INSTALL_HINTS = {
    "onnxruntime": "pip install onnxruntime (a base dependency of edge-retina: reinstall edge-retina)",
    "openvino": "pip install 'edge-retina[openvino]'",
    "tensorrt": (
        "on a Jetson install JetPack (it ships TensorRT's Python bindings) and pip install cuda-python; "
        "on an x86 box with an NVIDIA GPU pip install tensorrt cuda-python"
    ),
}


def _missing_library(backend: str) -> str | None:
    """The first library ``backend`` needs that does not import here (with why), or None."""
    for alternatives in _LIBRARIES[backend]:
        failures = []
        for module in alternatives:
            try:
                importlib.import_module(module)
                break
            except (ImportError, OSError) as exc:  # OSError: a wheel whose native libraries are missing
                failures.append(f"{module}: {exc}")
        else:
            return "; ".join(failures)
    return None


def available_backends() -> list[str]:
    """The backends whose libraries import on this machine, in ``BACKENDS`` order."""
    return [backend for backend in BACKENDS if _missing_library(backend) is None]


def create_runner(backend: str, model_path: Path, **kwargs: Any) -> Runner:
    """Load ``model_path`` on ``backend``; ``kwargs`` go to the runner (precision, threads, device...)."""
    if backend not in _RUNNERS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    missing = _missing_library(backend)
    if missing is not None:
        raise BackendError(f"the {backend} backend is not installed here ({missing}); {_INSTALL_HINTS[backend]}")
    module_name, class_name = _RUNNERS[backend]
    runner_class = getattr(importlib.import_module(module_name), class_name)
    return runner_class(model_path, **kwargs)
