"""The in-house reference dual encoder (the embedded default teacher)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from converters.reference import REFERENCE_WEIGHTS, load_reference
from converters.reference.model import REFERENCE_INPUT_SPEC

from . import Teacher, register_teacher
from .checkpoints import checkpoint_sha256


@register_teacher("reference")
def load(checkpoint: str | Path | None = None) -> Teacher:
    weights = Path(checkpoint) if checkpoint is not None else REFERENCE_WEIGHTS
    model = load_reference(weights).eval()

    def embed_texts(texts: list[str]) -> np.ndarray:
        with torch.no_grad():
            return model.encode_text(list(texts)).numpy()

    return Teacher(
        family="reference",
        name=weights.stem,
        image_encoder=model.image_encoder,
        embed_texts=embed_texts,
        input_spec=REFERENCE_INPUT_SPEC,
        ensembling="mean_renormalised",
        logit_scale=float(model.logit_scale.detach().exp()),
        checkpoint_sha256=checkpoint_sha256(weights),
    )
