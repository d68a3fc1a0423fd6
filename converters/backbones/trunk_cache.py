"""Frozen-trunk features of image views, computed once by OpenVINO and kept in a memory-mapped file.

Teachers and students here keep their ImageNet trunk frozen (``efficientnet_lite.lite_trunk``) and
train the head. The trunk is most of the compute (the high-resolution stages), so its features of
every view of every photo are computed once, before the first epoch. OpenVINO runs the trunk on this
machine's CPU about 5x faster than PyTorch (measured for EfficientNet-Lite0/2 at 320 px, 2 threads:
100 vs 24 and 74 vs 15 images/s), with ``INFERENCE_PRECISION_HINT=f32``, so the features are the FP32
network's (a test compares them with PyTorch's).

A cache file is written under a temporary name and renamed when complete: a killed run recomputes it,
and a finished one is never half-written.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from edge_retina.preprocess import Preprocessor
from edge_retina.preprocess.spec import InputSpec

from .efficientnet_lite import lite_trunk

BATCH = 16


class _Trunk(nn.Module):
    def __init__(self, model: nn.Module, frozen_blocks: int):
        super().__init__()
        self.model, self.frozen_blocks = model, frozen_blocks

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return lite_trunk(self.model, image, self.frozen_blocks)


class TrunkRunner:
    """``runner(uint8 NHWC images) -> float16 NCHW trunk features``, normalised with ``spec`` by the
    shared preprocessing and run by OpenVINO in FP32."""

    def __init__(self, model: nn.Module, frozen_blocks: int, spec: InputSpec, threads: int = 2):
        import openvino as ov

        trunk = _Trunk(model, frozen_blocks).eval()
        height, width = spec.height, spec.width
        example = torch.zeros(1, 3, height, width)
        with torch.no_grad():
            self.feature_shape = tuple(trunk(example).shape[1:])
            ov_model = ov.convert_model(trunk, example_input=example,
                                        input=[ov.PartialShape([-1, 3, height, width])])
        self._compiled = ov.Core().compile_model(
            ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
        self._preprocessor = Preprocessor(spec)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(self._preprocessor.normalise(images))
        return self._compiled(x)[0].astype(np.float16)


def cached_trunk_features(
    path: Path,
    runner: TrunkRunner,
    count: int,
    view_images: Callable[[int], np.ndarray],
    describe: dict,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(count, *feature_shape) float16 features of ``view_images(i)`` for i in range(count), memory-mapped.

    ``path`` names the cache (the caller derives it from everything the features depend on);
    ``describe`` is written beside it as JSON so a person can tell what a cache file holds.
    """
    path = Path(path)
    if path.is_file():
        features = np.load(path, mmap_mode="r")
        if features.shape == (count, *runner.feature_shape):
            return features
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(count, *runner.feature_shape))
    for start in range(0, count, BATCH):
        indices = range(start, min(count, start + BATCH))
        out[start:indices.stop] = runner(np.stack([view_images(i) for i in indices]))
        if progress:
            progress(len(indices))
    out.flush()
    del out
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps({**describe, "count": count,
                                                     "feature_shape": list(runner.feature_shape)}, indent=2))
    return np.load(path, mmap_mode="r")

