"""FLAIR and KeepFIT teachers: ResNet-50 + Bio_ClinicalBERT dual encoders with bias-free projections.

Layout facts, with their sources (jusiro/FLAIR ``flair/modeling/model.py``; KeepFIT is
lxirich/MM-Retinal ``KeepFIT/KeepFIT-CFP/keepfit/modeling/model.py``, a fork of FLAIR's model code):

- The checkpoint file is ``torch.save(model.state_dict())``: a flat state dict, no nesting
  (``FLAIRModel.fit`` / ``load_from_pretrained``; KeepFIT's ``fit`` calls ``self.state_dict()`` on the
  unwrapped model, so no DDP ``module.`` prefix). ``FLAIRModel`` is also a ``PyTorchModelHubMixin``,
  whose ``save_pretrained`` writes the same state dict as ``model.safetensors``; both are read here.
- ``vision_model.model.*``: torchvision ``resnet50`` with ``fc`` replaced by ``Identity`` (2048 pooled
  features); ``vision_model.projection_head_vision.projection.weight``: ``Linear(2048, 512, bias=False)``.
- ``text_model.model.*``: ``AutoModel`` of ``emilyalsentzer/Bio_ClinicalBERT`` (a BERT, pooler
  included); ``text_model.projection_head_text.projection.weight``: ``Linear(768, 512, bias=False)``.
  Both repositories pin transformers 4.27 (``requirements.txt``), which still saved the
  ``embeddings.position_ids`` buffer; newer transformers do not, so that one key is accepted when it
  holds the expected ``arange`` and dropped.
- ``ProjectionLayer``: L2-normalise, project, L2-normalise again (``projection=True, norm=True``).
- Text embedding (``TextModel.forward``): the BERT hidden states of layers 1, 2 and the last
  (``hidden_states[1]``, ``[2]``, ``[-1]``) are averaged over all token positions, then over the three
  layers, then projected. The tokenizer truncates at ``model_max_length`` = 77 in FLAIR, 256 in KeepFIT.
- Zero-shot prompts are ``"A fundus photograph of [CLS]"`` with the description in place of
  ``[CLS]`` (``caption`` default), and a class embedding is the plain mean of its descriptions'
  normalised embeddings (``compute_text_embeddings``: ``text_embeds.mean(0)``), i.e. ensembling "mean".
- ``logit_scale`` is stored as ``log(1 / temperature)``; ``compute_logits`` clamps it to
  ``[0, 4.6052]`` (4.6052 = ln 100) before ``exp()``, so the multiplier used is ``exp(clamp(...))``.
- KeepFIT adds ``attention.W_{q,k,v,o}.weight`` (``MultiHeadAttention(..., bias=False)``, 512x512),
  used only by its training losses: accepted for ``keepfit`` and ignored; anything else is an error.
- Preprocessing (``FLAIRModel.preprocess_image``; KeepFIT ``pre_transform.py`` and ``ImageScaling``):
  pixels / 255 with no mean/std, longest side resized to 512 keeping the aspect ratio with
  ``Resize(..., antialias=True)``, zero-padded at the bottom and right; no field-of-view crop.

The text tower's weights come from the checkpoint; its config and tokenizer come from a LOCAL
directory (``text_model_path``, e.g. a copy of Bio_ClinicalBERT's ``config.json`` and
``vocab.txt``): nothing is ever downloaded.

The FLAIR pieces here (the text tower, projections, legacy-key handling, logit scale) are reused
by RetiZero, whose code is a fork of FLAIR's; checkpoint reading and exact loading are
:mod:`converters.teachers.checkpoints`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from converters.torch_compat import ensure_torchvision
from edge_retina.preprocess.spec import InputSpec

from . import Teacher, register_teacher
from .checkpoints import (
    CheckpointLayoutError,
    CheckpointNotFoundError,
    checkpoint_sha256,
    load_exact,
    read_state_dict,
    require_checkpoint,
)

EMBED_DIM = 512  # proj_dim default in FLAIRModel / KeepFITModel
RESNET50_BLOCKS = (3, 4, 6, 3)  # torchvision resnet50's Bottleneck counts per stage
FLAIR_CAPTION = "A fundus photograph of [CLS]"  # FLAIRModel(caption=...) default
FLAIR_TEXT_MAX_LENGTH = 77  # TextModel: tokenizer.model_max_length = 77
KEEPFIT_TEXT_MAX_LENGTH = 256  # KeepFIT TextModel: tokenizer.model_max_length = 256
LOG_LOGIT_SCALE_RANGE = (0.0, 4.6052)  # compute_logits clamps the stored log-scale to this range
# transformers < 4.31 saved this buffer with the weights; FLAIR and KeepFIT pin 4.27.
LEGACY_POSITION_IDS_KEY = "text_model.model.embeddings.position_ids"
KEEPFIT_TRAINING_ONLY_KEYS = tuple(f"attention.W_{p}.weight" for p in "qkvo")

# Pixels / 255, no mean/std; letterbox to 512 with the padding at the bottom/right. No FoV crop:
# FLAIR and KeepFIT feed the whole photograph (black surround included), so cropping would show the
# model framings it never saw. "area": FLAIR resizes with torchvision's antialiased bilinear; on
# skimage's retina (cropped to 1411x1200, resized to 512) cv2's INTER_AREA is the closest of our
# interpolations to it (mean |diff| 0.0012 of full scale, against 0.0024 for INTER_LINEAR).
FLAIR_INPUT_SPEC = InputSpec(
    size=(512, 512),
    resize_mode="letterbox",
    pad_position="top-left",
    pad_value=0,
    interpolation="area",
    fov_crop=False,
    colour_order="RGB",
    scale=1.0 / 255.0,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
)
KEEPFIT_INPUT_SPEC = FLAIR_INPUT_SPEC  # KeepFIT pre_transform.py / ImageScaling: the same canvas resize


def drop_legacy_position_ids(state: dict[str, torch.Tensor], source: str) -> None:
    """Remove the ``position_ids`` buffer old transformers saved, after checking it is the plain range."""
    position_ids = state.pop(LEGACY_POSITION_IDS_KEY, None)
    if position_ids is not None and not torch.equal(
        position_ids.reshape(-1), torch.arange(position_ids.numel(), dtype=position_ids.dtype)
    ):
        raise CheckpointLayoutError(f"{source}: {LEGACY_POSITION_IDS_KEY} is not 0..n-1")


def clamped_logit_scale(log_scale: torch.Tensor) -> float:
    """The multiplier FLAIR-family ``compute_logits`` applies: exp of the clamped stored log-scale."""
    low, high = LOG_LOGIT_SCALE_RANGE
    return float(log_scale.detach().clamp(low, high).exp())


class ProjectionHead(nn.Module):
    """FLAIR's ``ProjectionLayer`` as used at inference: normalise, bias-free projection, normalise."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(F.normalize(features, dim=-1)), dim=-1)


class VisionTower(nn.Module):
    """``vision_model``: a backbone giving pooled features, then ``projection_head_vision``.

    Normalised image tensor (N, 3, H, W) -> L2-normalised embedding (N, D); this module is what is
    exported to ONNX.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, embed_dim: int):
        super().__init__()
        self.model = backbone
        self.projection_head_vision = ProjectionHead(feature_dim, embed_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.projection_head_vision(self.model(image))


def resnet50_backbone(blocks: Sequence[int] = RESNET50_BLOCKS) -> nn.Module:
    """torchvision's ResNet-50 (other ``blocks`` only for small test models) without ``fc``."""
    ensure_torchvision()
    from torchvision.models.resnet import Bottleneck, ResNet

    backbone = ResNet(Bottleneck, list(blocks))
    backbone.fc = nn.Identity()
    return backbone


RESNET50_FEATURE_DIM = 2048  # Bottleneck.expansion * 512, whatever the block counts


class BertTextTower(nn.Module):
    """``text_model``: FLAIR's BERT text encoder, pooled over layers 1, 2 and last, then projected."""

    def __init__(self, config, embed_dim: int):
        super().__init__()
        ensure_torchvision()
        from transformers import AutoModel

        self.model = AutoModel.from_config(config)
        self.projection_head_text = ProjectionHead(config.hidden_size, embed_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        # Mean over every token position (padding included, as FLAIR does), then over the 3 layers.
        pooled = torch.stack([hidden[1], hidden[2], hidden[-1]]).mean(dim=2).mean(dim=0)
        return self.projection_head_text(pooled)


def load_text_config_and_tokenizer(text_model_path: str | Path):
    """The text tower's config and tokenizer from a local directory (never the hub)."""
    path = Path(text_model_path)
    if not path.is_dir():
        raise CheckpointNotFoundError(
            f"text_model_path {path} is not a directory; it must hold the text model's config.json "
            "and tokenizer files (e.g. Bio_ClinicalBERT's config.json and vocab.txt)"
        )
    ensure_torchvision()
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return config, tokenizer


def apply_caption(text: str, caption: str | None) -> str:
    """Put ``text`` into the family's prompt template, unless it is already worded that way.

    FLAIR wraps every description (``caption.replace("[CLS]", description)``); a prompt that already
    starts with the template's lead-in ("a fundus photograph of ...") is kept as written rather than
    doubled.
    """
    if caption is None:
        return text
    lead_in = caption.split("[CLS]")[0].strip().lower()
    if lead_in and text.strip().lower().startswith(lead_in):
        return text
    return caption.replace("[CLS]", text)


def make_text_embedder(
    tower: BertTextTower, tokenizer, *, max_length: int, caption: str | None
) -> Callable[[list[str]], np.ndarray]:
    """texts -> (n, D) L2-normalised embeddings, one prompt per forward pass.

    FLAIR tokenises a class's descriptions together with ``padding=True`` and its mean pooling
    includes the padding positions, so its embedding of a description depends on which others share
    the batch. Embedding each prompt alone makes the result a function of the prompt only, and equal
    to FLAIR's for that prompt tokenised by itself.
    """
    if caption is not None and "[CLS]" not in caption:
        raise ValueError(f"caption must contain '[CLS]' where the description goes, got {caption!r}")
    tower = tower.eval()
    embed_dim = tower.projection_head_text.projection.out_features

    def embed_texts(texts: list[str]) -> np.ndarray:
        rows = []
        with torch.no_grad():
            for text in texts:
                tokens = tokenizer(
                    apply_caption(text, caption), truncation=True, max_length=max_length, return_tensors="pt"
                )
                rows.append(tower(tokens["input_ids"], tokens["attention_mask"]))
        if not rows:
            return np.zeros((0, embed_dim), np.float32)
        return torch.cat(rows).numpy().astype(np.float32)

    return embed_texts


class FlairDualEncoder(nn.Module):
    """FLAIR's module tree, so that its state dict keys are exactly the published ones."""

    def __init__(self, text_config, *, resnet_blocks: Sequence[int], embed_dim: int):
        super().__init__()
        self.vision_model = VisionTower(resnet50_backbone(resnet_blocks), RESNET50_FEATURE_DIM, embed_dim)
        self.text_model = BertTextTower(text_config, embed_dim)
        self.logit_scale = nn.Parameter(torch.zeros(()))


def _load_flair_family(
    family: str,
    checkpoint: str | Path | None,
    *,
    text_model_path: str | Path,
    caption: str | None,
    max_text_length: int,
    training_only_keys: Sequence[str],
    resnet_blocks: Sequence[int],
    embed_dim: int,
) -> Teacher:
    path = require_checkpoint(family, checkpoint)
    source = f"{family} checkpoint {path}"
    state = read_state_dict(path)
    drop_legacy_position_ids(state, source)
    missing_training_keys = [k for k in training_only_keys if k not in state]
    if missing_training_keys:
        raise CheckpointLayoutError(f"{source} lacks {family}'s training-only keys {missing_training_keys}")
    for key in training_only_keys:
        if state.pop(key).shape != (embed_dim, embed_dim):
            raise CheckpointLayoutError(f"{source}: {key} should be {embed_dim}x{embed_dim}")

    config, tokenizer = load_text_config_and_tokenizer(text_model_path)
    model = FlairDualEncoder(config, resnet_blocks=resnet_blocks, embed_dim=embed_dim)
    load_exact(model, state, source)
    model.eval()
    return Teacher(
        family=family,
        name=path.stem,
        image_encoder=model.vision_model,
        embed_texts=make_text_embedder(model.text_model, tokenizer, max_length=max_text_length, caption=caption),
        input_spec=KEEPFIT_INPUT_SPEC if family == "keepfit" else FLAIR_INPUT_SPEC,
        ensembling="mean",
        logit_scale=clamped_logit_scale(model.logit_scale),
        checkpoint_sha256=checkpoint_sha256(path),
    )


@register_teacher("flair")
def load_flair(
    checkpoint: str | Path | None = None,
    *,
    text_model_path: str | Path,
    caption: str | None = FLAIR_CAPTION,
    resnet_blocks: Sequence[int] = RESNET50_BLOCKS,
    embed_dim: int = EMBED_DIM,
) -> Teacher:
    """A FLAIR checkpoint (``flair_resnet.pth`` or the same state dict as ``.safetensors``).

    ``text_model_path``: local directory with Bio_ClinicalBERT's config and tokenizer files.
    ``caption``: prompt template (``None``: embed texts verbatim). ``resnet_blocks`` and ``embed_dim``
    exist for small test models; the defaults are the published architecture.
    """
    return _load_flair_family(
        "flair", checkpoint, text_model_path=text_model_path, caption=caption,
        max_text_length=FLAIR_TEXT_MAX_LENGTH, training_only_keys=(),
        resnet_blocks=resnet_blocks, embed_dim=embed_dim,
    )


@register_teacher("keepfit")
def load_keepfit(
    checkpoint: str | Path | None = None,
    *,
    text_model_path: str | Path,
    caption: str | None = FLAIR_CAPTION,
    resnet_blocks: Sequence[int] = RESNET50_BLOCKS,
    embed_dim: int = EMBED_DIM,
) -> Teacher:
    """A KeepFIT checkpoint: FLAIR's layout plus the training-only ``attention.*`` keys.

    Options as for :func:`load_flair`; KeepFIT's prediction caption is FLAIR's.
    """
    return _load_flair_family(
        "keepfit", checkpoint, text_model_path=text_model_path, caption=caption,
        max_text_length=KEEPFIT_TEXT_MAX_LENGTH, training_only_keys=KEEPFIT_TRAINING_ONLY_KEYS,
        resnet_blocks=resnet_blocks, embed_dim=embed_dim,
    )
