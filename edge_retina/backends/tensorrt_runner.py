"""TensorRT 10 on NVIDIA GPUs (Jetson, discrete cards), with CUDA memory through cuda-python.

Given a serialized engine (``.engine`` / ``.plan``) the runner loads it. Given the bundle's Q/DQ ONNX
it finds or builds an engine for the local GPU and TensorRT version (see ``tensorrt_engine_cache``):
explicit quantization in a strongly typed network, so the precisions come from the ONNX's Q/DQ
nodes and no builder precision flag is set. No torch and no pycuda: device buffers and the stream
are plain CUDA runtime calls.
"""
from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorrt as trt

try:
    from cuda.bindings import runtime as cudart
except ImportError:  # cuda-python before 12.6 exposed the runtime API as cuda.cudart
    from cuda import cudart

from edge_retina.backends import tensorrt_engine_cache as engine_cache
from edge_retina.backends.tensorrt_engine_cache import DEFAULT_MAX_BATCH
from edge_retina.backends.base import Dim, Runner
from edge_retina.errors import BackendError
from edge_retina.wording import plural

logger = logging.getLogger(__name__)

_TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
ENGINE_SUFFIXES = (".engine", ".plan")
DEFAULT_WORKSPACE_BYTES = 1 << 30


def _cuda(result: tuple, doing: str) -> Any:
    """Unpack a cuda-python ``(error, *values)`` result, raising BackendError on a CUDA error."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        raise BackendError(f"tensorrt: CUDA error {getattr(error, 'name', error)} while {doing}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _device_index(device: str) -> int:
    """The CUDA device index in ``device``: GPU -> 0, GPU.1 or cuda:1 -> 1 (OpenVINO and torch spellings)."""
    match = re.fullmatch(r"(?:GPU|CUDA)(?:[.:](\d+))?", device.strip().upper())
    if match is None:
        raise BackendError(f"tensorrt: runs on an NVIDIA GPU; device must be 'GPU' or 'GPU.<index>', got {device!r}")
    return int(match.group(1) or 0)


def local_target(device_index: int) -> engine_cache.EngineTarget:
    """The GPU model, compute capability and TensorRT version engines must match here."""
    props = _cuda(cudart.cudaGetDeviceProperties(device_index), f"reading the properties of GPU {device_index}")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return engine_cache.EngineTarget(
        gpu_name=name.rstrip("\x00").strip(),
        compute_capability=(props.major, props.minor),
        tensorrt_version=trt.__version__,
    )


class TensorRTRunner(Runner):
    """A TensorRT engine with one execution context, one CUDA stream and reusable device buffers.

    ``model_path`` is an engine file or the bundle's Q/DQ ONNX (engines are then cached under
    ``cache_dir``, by default ``~/.cache/edge-retina/tensorrt``). ``max_batch`` bounds the
    optimisation profile of a dynamic-batch ONNX; ``workspace_bytes`` caps builder scratch memory
    (Jetsons share it with the CPU). ``dla_core`` builds and runs the engine on that Deep Learning
    Accelerator core (Jetson AGX Orin, Orin NX, Xavier) instead of the GPU, with the layers the DLA
    cannot run left on the GPU when ``gpu_fallback`` (else the build fails on them). ``precision``
    is only recorded: a strongly typed network takes its types from the ONNX. ``threads`` has no
    meaning on a GPU and is only recorded too.
    """

    name = "tensorrt"

    def __init__(
        self,
        model_path: Path,
        *,
        precision: str,
        threads: int | None = None,
        device: str = "GPU",
        cache_dir: Path | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        dla_core: int | None = None,
        gpu_fallback: bool = True,
    ) -> None:
        super().__init__(model_path, precision=precision, threads=threads, device=device, cache_dir=cache_dir)
        if max_batch < 1:
            raise BackendError(f"tensorrt: max_batch must be at least 1, got {max_batch}")
        self._max_batch_to_build = max_batch
        self._workspace_bytes = workspace_bytes
        if dla_core is not None and dla_core < 0:
            raise BackendError(f"tensorrt: dla_core must be a core number (0, 1, ...) or None, got {dla_core}")
        self._gpu_fallback = gpu_fallback
        self._device_index = _device_index(device)
        _cuda(cudart.cudaSetDevice(self._device_index), f"selecting GPU {self._device_index}")
        self._target = replace(local_target(self._device_index), dla_core=dla_core)

        suffix = self.model_path.suffix.lower()
        if suffix == ".onnx":
            cache_root = self.cache_dir or engine_cache.default_cache_dir()
            self._engine_path = engine_cache.ensure_engine(
                self.model_path, cache_root, self._target,
                lambda onnx: self._build_engine(onnx, engine_cache.timing_cache_path(cache_root, self._target)),
            )
        elif suffix in ENGINE_SUFFIXES:
            self._engine_path = self.model_path
            self._check_prebuilt_engine()
        else:
            raise BackendError(
                f"tensorrt: expected an .onnx or a serialized engine (.engine/.plan), got {self.model_path.name}"
            )

        self._runtime = trt.Runtime(_TRT_LOGGER)
        if dla_core is not None:
            self._runtime.DLA_core = dla_core  # a DLA engine runs on the core the runtime names
        self._engine = self._runtime.deserialize_cuda_engine(self._engine_path.read_bytes())
        if self._engine is None:
            raise BackendError(
                f"tensorrt: cannot deserialize {self._engine_path} (corrupt, or built by another TensorRT "
                f"version or GPU; TensorRT's log above says which)"
            )
        self._tensor_names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in self._tensor_names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in self._tensor_names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or not outputs:
            raise BackendError(
                f"tensorrt: {self._engine_path.name} has inputs {inputs} and outputs {outputs}; "
                f"an image encoder has one input and at least one output"
            )
        self._input_name, self._output_name = inputs[0], outputs[0]
        self._input_shape: tuple[Dim, ...] = tuple(
            None if d < 0 else int(d) for d in self._engine.get_tensor_shape(self._input_name)
        )
        self._check_model_input_rank(self._input_shape)
        if self._input_shape[0] is None:
            # The largest batch the engine's first optimisation profile accepts (min, opt, max).
            self.max_batch = int(self._engine.get_tensor_profile_shape(self._input_name, 0)[2][0])
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in self._tensor_names}

        self._context = self._engine.create_execution_context()
        self._stream = _cuda(cudart.cudaStreamCreate(), "creating a CUDA stream")
        #: tensor name -> (device pointer, capacity in bytes); grown on demand, reused across calls.
        self._buffers: dict[str, tuple[int, int]] = {}

    def _check_prebuilt_engine(self) -> None:
        """A shipped engine may carry a sidecar; if it says another GPU/TensorRT built it, refuse."""
        if not engine_cache.sidecar_path(self.model_path).is_file():
            return
        try:
            record = engine_cache.read_sidecar(self.model_path)
        except ValueError as exc:
            raise BackendError(f"tensorrt: {self.model_path.name}: {exc}") from exc
        reason = engine_cache.target_mismatch(record, self._target)
        if reason is not None:
            raise BackendError(
                f"tensorrt: {self.model_path.name} cannot run here ({reason}); pass the bundle's ONNX instead "
                f"so an engine is built for this device"
            )

    def _build_engine(self, onnx_path: Path, timing_cache_file: Path) -> bytes:
        builder = trt.Builder(_TRT_LOGGER)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, _TRT_LOGGER)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"tensorrt: cannot parse {onnx_path.name}: {errors}")
        if network.num_inputs != 1:
            raise BackendError(
                f"tensorrt: {onnx_path.name} has {network.num_inputs} inputs; an image encoder takes one"
            )
        image = network.get_input(0)
        shape = tuple(image.shape)
        if len(shape) != 4:
            raise BackendError(
                f"tensorrt: {onnx_path.name} takes a rank-{len(shape)} input {list(shape)}; "
                f"an image encoder needs rank 4 (N, C, H, W)"
            )

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self._workspace_bytes)
        dla_core = self._target.dla_core
        if dla_core is not None:
            if dla_core >= builder.num_DLA_cores:
                raise BackendError(f"tensorrt: DLA core {dla_core} asked for, this device has "
                                   f"{plural(builder.num_DLA_cores, 'DLA core')}")
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = dla_core
            if self._gpu_fallback:
                config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        known_timings = timing_cache_file.read_bytes() if timing_cache_file.is_file() else b""
        timing_cache = config.create_timing_cache(known_timings)
        if not config.set_timing_cache(timing_cache, ignore_mismatch=False):
            logger.warning("tensorrt: timing cache %s does not fit this device; starting a new one", timing_cache_file)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        if shape[0] < 0:
            chw = shape[1:]
            if any(d < 0 for d in chw):
                raise BackendError(f"tensorrt: {onnx_path.name} must have a fixed (C, H, W), got {list(shape)}")
            profile = builder.create_optimization_profile()
            # Screening embeds one photo at a time: tune for batch 1, accept up to max_batch.
            profile.set_shape(image.name, (1, *chw), (1, *chw), (self._max_batch_to_build, *chw))
            config.add_optimization_profile(profile)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError(f"tensorrt: building an engine from {onnx_path.name} failed (see TensorRT's log)")
        engine_cache.store_timing_cache(timing_cache_file, bytes(config.get_timing_cache().serialize()))
        return bytes(serialized)

    @property
    def input_shape(self) -> tuple[Dim, ...]:
        return self._input_shape

    @property
    def library_version(self) -> str:
        return trt.__version__

    def _device_buffer(self, name: str, nbytes: int) -> int:
        pointer, capacity = self._buffers.get(name, (0, 0))
        if capacity < nbytes:
            if pointer:
                _cuda(cudart.cudaFree(pointer), "freeing a device buffer")
                del self._buffers[name]
            pointer = _cuda(cudart.cudaMalloc(nbytes), f"allocating {nbytes} bytes for {name}")
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def _run(self, batch: np.ndarray) -> np.ndarray:
        host_input = np.ascontiguousarray(batch, dtype=self._dtypes[self._input_name])
        if not self._context.set_input_shape(self._input_name, host_input.shape):
            raise BackendError(f"tensorrt: the engine does not accept an input of shape {list(host_input.shape)}")
        for name in self._tensor_names:
            shape = tuple(self._context.get_tensor_shape(name))
            nbytes = max(1, int(np.prod(shape)) * self._dtypes[name].itemsize)
            self._context.set_tensor_address(name, self._device_buffer(name, nbytes))

        output_shape = tuple(self._context.get_tensor_shape(self._output_name))
        host_output = np.empty(output_shape, dtype=self._dtypes[self._output_name])
        input_pointer = self._buffers[self._input_name][0]
        output_pointer = self._buffers[self._output_name][0]
        _cuda(cudart.cudaMemcpyAsync(
            input_pointer, host_input.ctypes.data, host_input.nbytes,
            cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream,
        ), "copying the batch to the GPU")
        if not self._context.execute_async_v3(int(self._stream)):
            raise BackendError(f"tensorrt: execution failed on {self._engine_path.name} (see TensorRT's log)")
        _cuda(cudart.cudaMemcpyAsync(
            host_output.ctypes.data, output_pointer, host_output.nbytes,
            cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream,
        ), "copying the embeddings back")
        _cuda(cudart.cudaStreamSynchronize(self._stream), "waiting for the engine")
        return host_output

    def _details(self) -> dict[str, Any]:
        return {
            "gpu_name": self._target.gpu_name,
            "compute_capability": ".".join(map(str, self._target.compute_capability)),
            "engine_path": str(self._engine_path),
        }

    def _release(self) -> None:
        for pointer, _ in self._buffers.values():
            cudart.cudaFree(pointer)
        self._buffers.clear()
        cudart.cudaStreamDestroy(self._stream)
        # The context must go before the engine, and the engine before its runtime.
        del self._context
        del self._engine
        del self._runtime
