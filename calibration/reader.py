"""Feeding calibration tensors to quantizers, one batch per call.

ONNX Runtime's ``quantize_static`` and its QDQ debugging tools take a ``CalibrationDataReader``:
an object whose ``get_next()`` returns ``{input_name: batch}`` and then ``None`` when exhausted.
``ArrayCalibrationReader`` is that, over an in-memory array, and can ``rewind()`` for a second pass
(calibration, then per-layer error analysis, read the same data).
"""
from __future__ import annotations

import numpy as np
from onnxruntime.quantization import CalibrationDataReader


class ArrayCalibrationReader(CalibrationDataReader):
    def __init__(self, tensors: np.ndarray, input_name: str = "image", batch_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.tensors = np.ascontiguousarray(tensors, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = batch_size
        self._position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position >= len(self.tensors):
            return None
        batch = self.tensors[self._position:self._position + self.batch_size]
        self._position += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._position = 0

    def __len__(self) -> int:
        return -(-len(self.tensors) // self.batch_size)
