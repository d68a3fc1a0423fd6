"""OpenVINO on Intel CPUs (and integrated GPUs): reads IR (``.xml`` + ``.bin``) or ONNX."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import openvino.properties as ov_props
import openvino.properties.hint as ov_hints

from edge_retina.backends.base import Dim, Runner
from edge_retina.engines import OPENVINO_VIRTUAL_DEVICES, runs_on_cpu
from edge_retina.errors import BackendError
from edge_retina.user_caches import mark_used

logger = logging.getLogger(__name__)


class OpenVinoRunner(Runner):
    """A model compiled by ``openvino.Core`` for ``device`` with the LATENCY performance hint.

    Whatever the precision, the CPU computes the floating-point part of a model in f32
    (``INFERENCE_PRECISION_HINT``; for "fp32" on every device): on CPUs with AVX-512 BF16 or AMX,
    OpenVINO's default is bf16, in which an FP32 model drifts from its reference and an FP16 or INT8
    engine computes something else than the accuracy guard checked on a CPU without bf16 (the default
    student's FP16 IR in bf16 failed the guard: BENCHMARKS.md, "INT8 engines"). An FP16 IR's weights are
    widened to f32 on the CPU; an INT8 IR's quantized layers run in INT8 either way. Under AUTO, HETERO
    or MULTI only the CPU gets the hint; a GPU keeps its default (f16) for FP16 and INT8.
    ``threads`` sets ``INFERENCE_NUM_THREADS`` on the CPU (the GPU plugin has no such pool);
    ``cache_dir`` turns on OpenVINO's compiled-model cache, which makes later loads much faster.
    """

    name = "openvino"

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
        core = ov.Core()
        model = self._read_model(core)

        if len(model.inputs) != 1:
            raise BackendError(
                f"openvino: {self.model_path.name} has {len(model.inputs)} inputs; an image encoder takes exactly one"
            )
        partial_shape = model.input(0).get_partial_shape()
        if partial_shape.rank.is_dynamic:
            raise BackendError(f"openvino: {self.model_path.name} has an input of unknown rank; it needs (N, C, H, W)")
        self._input_shape: tuple[Dim, ...] = tuple(d.get_length() if d.is_static else None for d in partial_shape)
        self._check_model_input_rank(self._input_shape)

        self._check_device_available(core)
        config: dict[str, Any] = {ov_hints.performance_mode: ov_hints.PerformanceMode.LATENCY}
        if precision == "fp32":
            config[ov_hints.inference_precision] = ov.Type.f32
        elif runs_on_cpu("openvino", device):  # the CPU's share only: a GPU that AUTO picks keeps f16
            config[ov_props.device.properties] = {"CPU": {ov_hints.inference_precision: ov.Type.f32}}
        if threads is not None and self._on_cpu_plugin:
            config[ov_props.inference_num_threads] = threads
        if self.cache_dir is not None:
            self._use_cache(core, self.cache_dir)
        try:
            self._compiled = core.compile_model(model, device, config)
        except RuntimeError as exc:
            raise BackendError(f"openvino: cannot compile {self.model_path.name} for {device}: {exc}") from exc
        self._input_dtype = self._compiled.input(0).get_element_type().to_dtype()
        self._request = self._compiled.create_infer_request()

    def _use_cache(self, core: ov.Core, cache_dir: Path) -> None:
        """Turn on the compiled-model cache in ``cache_dir``; without it (one warning) when the folder
        cannot be created or written: the cache only makes later loads faster."""
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            if not os.access(cache_dir, os.W_OK):
                raise PermissionError(f"{cache_dir} is not writable")
        except OSError as exc:
            logger.warning("openvino: no compiled-model cache (%s); %s is compiled on every load",
                           exc.strerror or exc, self.model_path.name)
            self.cache_dir = None
            return
        mark_used(cache_dir)
        core.set_property({ov_props.cache_dir: str(cache_dir)})

    @property
    def _on_cpu_plugin(self) -> bool:  # the CPU plugin itself, whose properties (threads) may be set
        return self.device.upper().split(".")[0] == "CPU"

    def _read_model(self, core: ov.Core) -> ov.Model:
        suffix = self.model_path.suffix.lower()
        if suffix == ".xml":
            weights = self.model_path.with_suffix(".bin")
            if not weights.is_file():
                raise BackendError(f"openvino: IR weights not found beside the model: {weights}")
            sources: tuple[str, ...] = (str(self.model_path), str(weights))
        elif suffix == ".onnx":
            sources = (str(self.model_path),)
        else:
            raise BackendError(f"openvino: expected an IR .xml or an .onnx model, got {self.model_path.name}")
        try:
            return core.read_model(*sources)
        except RuntimeError as exc:
            raise BackendError(f"openvino: cannot read {self.model_path}: {exc}") from exc

    def _check_device_available(self, core: ov.Core) -> None:
        family = self.device.upper().split(":")[0].split(".")[0]
        if family in OPENVINO_VIRTUAL_DEVICES:
            return
        available = core.available_devices
        if self.device.upper() not in available and family not in {d.split(".")[0] for d in available}:
            raise BackendError(
                f"openvino: device {self.device!r} is not available on this machine (available: {', '.join(available)})"
            )

    @property
    def input_shape(self) -> tuple[Dim, ...]:
        return self._input_shape

    @property
    def library_version(self) -> str:
        return ov.get_version()

    @property
    def compiled_model(self) -> ov.CompiledModel:
        """The compiled model, to read back the properties the plugin actually applied."""
        return self._compiled

    def _run(self, batch: np.ndarray) -> np.ndarray:
        try:
            self._request.infer({0: batch.astype(self._input_dtype, copy=False)})
        except RuntimeError as exc:
            raise BackendError(f"openvino: inference failed on {self.model_path.name}: {exc}") from exc
        # The output tensor is the request's own buffer, overwritten by the next call: copy it out.
        return self._request.get_output_tensor(0).data.copy()

    def _details(self) -> dict[str, Any]:
        details: dict[str, Any] = {
            "inference_precision": self._compiled.get_property(ov_hints.inference_precision).get_type_name(),
            "performance_hint": str(self._compiled.get_property(ov_hints.performance_mode)),
        }
        if self._on_cpu_plugin:
            details["inference_num_threads"] = self._compiled.get_property(ov_props.inference_num_threads)
        return details

    def _release(self) -> None:
        del self._request
        del self._compiled
