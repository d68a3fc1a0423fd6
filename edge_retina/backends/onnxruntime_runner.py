"""ONNX Runtime on the CPU: the backend every device has (it is a base dependency)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_retina.backends.base import Dim, Runner
from edge_retina.errors import BackendError

# ONNX element types an image input may have, as ORT names them; float16 models get a cast batch.
_INPUT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class OnnxRuntimeRunner(Runner):
    """An ONNX model in an ``onnxruntime.InferenceSession`` on the CPUExecutionProvider.

    All graph optimisations are on and nodes run sequentially (one image encoder has no parallel
    branches worth the inter-op pool); ``threads`` sets the intra-op pool. ``cache_dir`` is not
    used: ORT optimises the graph in memory at load time.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_path: Path,
        *,
        precision: str,
        threads: int | None = None,
        device: str = "CPU",
        cache_dir: Path | None = None,
    ) -> None:
        super().__init__(model_path, precision=precision, threads=threads, device=device, cache_dir=cache_dir)
        if device.upper() != "CPU":
            raise BackendError(f"onnxruntime: only the CPU device is supported here, got {device!r}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(
                str(self.model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own pybind exception types; report them uniformly
            raise BackendError(f"onnxruntime: cannot load {self.model_path}: {exc}") from exc

        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise BackendError(
                f"onnxruntime: {self.model_path.name} has {len(inputs)} inputs "
                f"({[i.name for i in inputs]}); an image encoder takes exactly one"
            )
        self._input_name = inputs[0].name
        self._input_shape: tuple[Dim, ...] = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        self._check_model_input_rank(self._input_shape)
        if inputs[0].type not in _INPUT_DTYPES:
            raise BackendError(
                f"onnxruntime: {self.model_path.name} takes {inputs[0].type}; an image encoder takes "
                f"float or float16 pixels"
            )
        self._input_dtype = _INPUT_DTYPES[inputs[0].type]
        self._output_name = self._session.get_outputs()[0].name

    @property
    def input_shape(self) -> tuple[Dim, ...]:
        return self._input_shape

    @property
    def library_version(self) -> str:
        return ort.__version__

    @property
    def session_options(self) -> ort.SessionOptions:
        """The options the session actually runs with (as ORT reports them)."""
        return self._session.get_session_options()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        feed = {self._input_name: batch.astype(self._input_dtype, copy=False)}
        try:
            (output,) = self._session.run([self._output_name], feed)
        except Exception as exc:  # ORT's pybind errors (shape, type, kernel failures)
            raise BackendError(f"onnxruntime: inference failed on {self.model_path.name}: {exc}") from exc
        return output

    def _details(self) -> dict[str, Any]:
        return {
            "providers": self._session.get_providers(),
            "intra_op_num_threads": self.session_options.intra_op_num_threads,
        }

    def _release(self) -> None:
        del self._session
