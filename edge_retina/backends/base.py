"""The one interface every inference backend implements.

A runner owns a loaded model on one device and turns a float32 NCHW batch into float32 (N, D)
embeddings (the model's first output). Input checking, batching against a fixed-batch model and the
closed-state guard live here, so each backend only says how to load a model and run one batch.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import numpy as np

from edge_retina.engines import PRECISIONS
from edge_retina.errors import BackendError
from edge_retina.wording import plural

#: The name of a bundle model's input (the converter exports it so; TensorRT build profiles name it).
INPUT_NAME = "image"

#: One dimension of a model input: a size, or None where the model leaves it symbolic.
Dim = int | None


class Runner(abc.ABC):
    """A model loaded on a backend, ready to embed image batches.

    Subclasses set ``name`` and implement ``_run`` (one batch the model accepts as-is),
    ``input_shape``, ``library_version`` and ``_release``. Use as a context manager or call
    ``close()`` when done; a closed runner refuses to run.
    """

    name: str

    def __init__(
        self,
        model_path: Path,
        *,
        precision: str,
        threads: int | None = None,
        device: str = "CPU",
        cache_dir: Path | None = None,
    ) -> None:
        model_path = Path(model_path)
        if not model_path.exists():
            raise BackendError(f"{self.name}: model file not found: {model_path}")
        if not model_path.is_file():
            raise BackendError(f"{self.name}: model path is not a file: {model_path}")
        if model_path.stat().st_size == 0:
            raise BackendError(f"{self.name}: model file is empty: {model_path}")
        # The precision picks device settings (OpenVINO must be told to keep "fp32" in f32); the
        # runner never converts the model itself.
        if precision not in PRECISIONS:
            raise BackendError(f"{self.name}: precision must be one of {PRECISIONS}, got {precision!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise BackendError(f"{self.name}: threads must be a positive integer or None, got {threads!r}")
        self.model_path = model_path
        self.precision = precision
        self.threads = threads
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        #: Largest batch one call of ``_run`` may get when the batch axis is dynamic (None: no limit).
        self.max_batch: int | None = None
        self._closed = False

    # -- what a backend provides -------------------------------------------------------------

    @property
    @abc.abstractmethod
    def input_shape(self) -> tuple[Dim, ...]:
        """The model's image input as (N, C, H, W); None marks a dynamic dimension."""

    @property
    @abc.abstractmethod
    def library_version(self) -> str:
        """Version of the inference library behind this runner."""

    @abc.abstractmethod
    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch the model accepts as-is (checked float32 NCHW); return its first output."""

    @abc.abstractmethod
    def _release(self) -> None:
        """Free the library objects (sessions, engines, device memory)."""

    def _details(self) -> dict[str, Any]:
        """Backend-specific facts for ``info()`` (settings read back from the library)."""
        return {}

    # -- the interface callers use -------------------------------------------------------------

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Embed a float32 (N, C, H, W) batch; returns float32 (N, D).

        A model with a fixed batch of 1 runs the images one by one; a dynamic-batch model gets the
        whole batch (in chunks of ``max_batch`` when the backend has a limit).
        """
        self._ensure_open()
        batch = self._checked_batch(batch)
        count = batch.shape[0]
        model_batch = self.input_shape[0]
        if model_batch is None:
            step = min(count, self.max_batch) if self.max_batch else count
        elif model_batch == 1 or model_batch == count:
            step = model_batch
        else:
            raise BackendError(
                f"{self.name}: the model has a fixed batch of {model_batch}; got {plural(count, 'image')} "
                f"(export it with batch 1 or a dynamic batch to run any number)"
            )
        outputs = []
        for start in range(0, count, step):
            chunk = batch[start:start + step]
            outputs.append(self._checked_output(self._run(chunk), len(chunk)))
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=0)

    def info(self) -> dict[str, Any]:
        """What is running where: backend, library version, device, precision, threads, model."""
        self._ensure_open()
        return {
            "backend": self.name,
            "library_version": self.library_version,
            "device": self.device,
            "precision": self.precision,
            "threads": self.threads,
            "model_path": str(self.model_path),
            "input_shape": list(self.input_shape),
            **self._details(),
        }

    def close(self) -> None:
        """Release the model; safe to call more than once."""
        if not self._closed:
            self._closed = True
            self._release()

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- checks shared by all backends --------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise BackendError(f"{self.name}: runner is closed")

    def _check_model_input_rank(self, shape: tuple[Dim, ...]) -> None:
        """Backends call this after loading: an image encoder takes one NCHW tensor."""
        if len(shape) != 4:
            raise BackendError(
                f"{self.name}: {self.model_path.name} takes a rank-{len(shape)} input {list(shape)}; "
                f"an image encoder needs rank 4 (N, C, H, W)"
            )

    def _checked_batch(self, batch: np.ndarray) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            raise BackendError(f"{self.name}: infer() needs a numpy array, got {type(batch).__name__}")
        if not np.issubdtype(batch.dtype, np.floating):
            # Integer pixels mean the preprocessing step was skipped: refuse rather than embed garbage.
            raise BackendError(
                f"{self.name}: infer() needs a float32 NCHW batch, got dtype {batch.dtype} "
                f"(run the images through edge_retina.preprocess first)"
            )
        expected = self.input_shape
        if batch.ndim != 4 or batch.shape[0] == 0 or any(
            want is not None and got != want for want, got in zip(expected[1:], batch.shape[1:])
        ):
            wanted = ["N", *("?" if d is None else d for d in expected[1:])]
            raise BackendError(
                f"{self.name}: input tensor has shape {list(batch.shape)}, the model expects {wanted}"
            )
        return np.ascontiguousarray(batch, dtype=np.float32)

    def _checked_output(self, output: np.ndarray, count: int) -> np.ndarray:
        if output.ndim != 2 or output.shape[0] != count:
            raise BackendError(
                f"{self.name}: the model's first output has shape {list(output.shape)}; "
                f"an image encoder must return ({count}, D) embeddings"
            )
        return np.asarray(output, dtype=np.float32)
