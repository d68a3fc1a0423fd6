"""A bundle built through the converter's pipeline from a small randomly initialised encoder.

For testing mechanics only (loading, screening, CLI, bad input): its scores mean nothing. Accuracy
is tested with the trained reference model.
"""
from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

EMBED_DIM = 32


def _tiny_encoder():
    import torch
    from torch import nn

    class TinyEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )
            self.projection = nn.Linear(16, EMBED_DIM, bias=False)

        def forward(self, x):
            return nn.functional.normalize(self.projection(self.features(x)), dim=-1)

    torch.manual_seed(0)
    return TinyEncoder().eval()


def _hash_text_embeddings(texts: list[str]) -> np.ndarray:
    """Deterministic stand-in for a text tower: a random unit vector seeded by each text."""
    rows = []
    for text in texts:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).normal(size=EMBED_DIM)
        rows.append(v / np.linalg.norm(v))
    return np.stack(rows).astype(np.float32)


def tiny_recipe(size: int = 96):
    """The tiny encoder with hashed prompt embeddings, at ``size`` x ``size`` pixels."""
    from converters.bundle_builder import BundleRecipe
    from converters.prompt_files import load_prompt_file
    from edge_retina.preprocess.spec import InputSpec

    return BundleRecipe(
        encoder=_tiny_encoder(),
        input_spec=InputSpec(size=(size, size), mean=(0.5, 0.3, 0.2), std=(0.25, 0.2, 0.15)),
        embed_texts=_hash_text_embeddings,
        conditions=load_prompt_file(),
        ensembling="mean_renormalised",
        logit_scale=50.0,
        family="test-tiny",
        name="tiny-random",
        teacher_checkpoint_sha256="0" * 64,
    )


def build_tiny_bundle(out_dir: Path, *, archive: Path | None = None, size: int = 96) -> Path:
    """ONNX Runtime and OpenVINO FP32 engines, made by the converter's own pipeline (a throwaway step cache)."""
    from converters.convert_pipeline import ConvertSettings, convert
    from converters.engine_build import EngineTarget

    targets = [EngineTarget("onnxruntime", "fp32"), EngineTarget("openvino", "fp32")]
    with tempfile.TemporaryDirectory(prefix="edge-retina-tiny-") as cache:
        return convert(tiny_recipe(size), out_dir, ConvertSettings(targets, cache_dir=Path(cache)), archive=archive,
                       command="tests: build_tiny_bundle")
