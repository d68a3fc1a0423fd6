"""RetiZero teacher: RETFound ViT-L/16 with LoRA on q and v, FLAIR's text tower and projections.

Layout facts, with their sources (LooKing9218/RetiZero; its model code is a fork of FLAIR's):

- The checkpoint (``RetiZero.pth``) is a flat state dict of ``CLIPRModel(vision_type="lora", R=8)``,
  loaded with ``load_state_dict(state_dict, strict=True)`` (``Zeroshot.py``,
  ``zeroshot/modeling/model.py``).
- Image backbone (``zeroshot/modeling/LoraRETFound.py``, ``models_vit.py``): RETFound's ViT-Large
  (rmaphoh/RETFound_MAE ``models_vit.py`` ``vit_large_patch16``: 224 px, patch 16, width 1024, depth
  24, 16 heads, MLP ratio 4, qkv bias, LayerNorm eps 1e-6), built on timm's ``VisionTransformer``
  with ``global_pool=False``: the output is the final ``norm`` applied to the class token. The
  classifier ``head`` is replaced by an identity, so it has no keys.
- LoRA (``zeroshot/modeling/LORA/lora_image_encoder.py``): ``LoRA_ViT`` keeps the ViT as
  ``lora_vit`` and replaces every block's ``attn.qkv`` by ``_LoRA_qkv``, which holds the original
  Linear as ``qkv`` and bias-free ``linear_a_q``/``linear_b_q``/``linear_a_v``/``linear_b_v``
  (A: width->r, B: r->width). Its forward adds ``B_q(A_q(x))`` to the first ``width`` outputs (q) and
  ``B_v(A_v(x))`` to the last ``width`` outputs (v), with no scaling factor. The A/B lists on
  ``LoRA_ViT`` are plain Python lists, so the factors appear only under the blocks. Rank: 8
  (``Zeroshot.py`` passes ``R=8``).
- Projections, normalisation, the text tower (Bio_ClinicalBERT, ``CLIPRModel``'s default
  ``bert_type``; the same pooling as FLAIR; ``model_max_length`` 77), the caption
  ``"A fundus photograph of [CLS]"``, the plain mean over descriptions and the clamped
  ``logit_scale``: as in FLAIR (see :mod:`converters.teachers.flair`).
- Preprocessing (``CLIPRModel.preprocess_image``, ``clip_modules/pretraining/data/dataloader.py``):
  PIL ``Resize((224, 224))`` of the whole image (bilinear, antialiased; the aspect ratio is not
  kept), ``ToTensor`` (/255) and ImageNet mean/std.

For export the LoRA factors are merged into the qkv weights (``W_q += B_q @ A_q``,
``W_v += B_v @ A_v``) by the explicit key table below, leaving a plain timm ``VisionTransformer``
(timm's key names are RETFound's, which subclasses it). ``merge_lora=False`` keeps the un-merged
published module tree instead (for checking the merge).
"""
from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from converters.torch_compat import ensure_torchvision
from edge_retina.preprocess.spec import InputSpec

from . import Teacher, register_teacher
from .checkpoints import (
    checkpoint_sha256,
    load_exact,
    read_state_dict,
    require_checkpoint,
)
from .flair import (
    EMBED_DIM,
    FLAIR_CAPTION,
    FLAIR_TEXT_MAX_LENGTH,
    BertTextTower,
    VisionTower,
    clamped_logit_scale,
    drop_legacy_position_ids,
    load_text_config_and_tokenizer,
    make_text_embedder,
)

# RETFound vit_large_patch16 (rmaphoh/RETFound_MAE models_vit.py)
VIT_IMAGE_SIZE = 224
VIT_PATCH_SIZE = 16
VIT_WIDTH = 1024
VIT_DEPTH = 24
VIT_HEADS = 16
VIT_MLP_RATIO = 4
VIT_LAYER_NORM_EPS = 1e-6
LORA_RANK = 8  # Zeroshot.py: CLIPRModel(vision_type="lora", R=8)
LORA_SCALE = 1.0  # _LoRA_qkv adds B(A(x)) as is: no alpha / r factor

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # transforms.Normalize in CLIPRModel.preprocess_image
IMAGENET_STD = (0.229, 0.224, 0.225)

# The whole photograph stretched to 224x224 (RetiZero resizes to a fixed (224, 224), aspect ratio
# not kept), ImageNet statistics. No FoV crop: RetiZero never crops, so its embeddings are of whole,
# stretched photographs. "area": closest of our interpolations to PIL's antialiased bilinear on
# skimage's retina (cropped to 1411x1200): mean |diff| 0.0018 of full scale, 0.0054 for INTER_LINEAR.
RETIZERO_INPUT_SPEC = InputSpec(
    size=(VIT_IMAGE_SIZE, VIT_IMAGE_SIZE),
    resize_mode="stretch",
    interpolation="area",
    fov_crop=False,
    colour_order="RGB",
    scale=1.0 / 255.0,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
)

_VIT_PREFIX = "vision_model.model.lora_vit."
LORA_FACTOR = "lora factor"
#: Published RetiZero image-backbone key -> key of the merged plain timm ``VisionTransformer``.
#: Rows are tried in order; ``LORA_FACTOR`` rows are folded into that block's ``attn.qkv.weight``.
RETIZERO_TO_TIMM_KEYS: tuple[tuple[str, str], ...] = (
    (r"vision_model\.model\.lora_vit\.blocks\.(\d+)\.attn\.qkv\.qkv\.(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    (r"vision_model\.model\.lora_vit\.blocks\.(\d+)\.attn\.qkv\.linear_[ab]_[qv]\.weight", LORA_FACTOR),
    (r"vision_model\.model\.lora_vit\.(.+)", r"\1"),
)


def timm_key(published_key: str) -> str | None:
    """The merged timm key of a published backbone key; ``LORA_FACTOR`` for a LoRA factor; ``None``
    if it is not a backbone key."""
    for pattern, target in RETIZERO_TO_TIMM_KEYS:
        match = re.fullmatch(pattern, published_key)
        if match:
            return target if target == LORA_FACTOR else match.expand(target)
    return None


def merge_lora_state(published: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RetiZero's LoRA-ViT tensors -> a plain timm ViT state dict with ``W + scale * B @ A`` merged in.

    ``published`` is a whole checkpoint whose layout was already checked; keys outside the backbone
    are skipped.
    """
    merged: dict[str, torch.Tensor] = {}
    for key, tensor in published.items():
        target = timm_key(key)
        if target is not None and target != LORA_FACTOR:
            merged[target] = tensor.clone()
    for key in [k for k in merged if k.endswith(".attn.qkv.weight")]:
        lora = _VIT_PREFIX + key.removesuffix(".weight")  # ...blocks.N.attn.qkv
        weight = merged[key]
        width = weight.shape[1]
        delta_q = published[f"{lora}.linear_b_q.weight"] @ published[f"{lora}.linear_a_q.weight"]
        delta_v = published[f"{lora}.linear_b_v.weight"] @ published[f"{lora}.linear_a_v.weight"]
        weight[:width] += LORA_SCALE * delta_q  # q rows come first in timm's fused qkv...
        weight[-width:] += LORA_SCALE * delta_v  # ...and v rows last, as _LoRA_qkv slices them
    return merged


class LoRAQKV(nn.Module):
    """RetiZero's ``_LoRA_qkv`` (same attribute names): a fused qkv Linear plus LoRA on q and v.

    Written here rather than taken from peft: peft adapts whole Linear modules, while RetiZero adapts
    only the q and v slices of timm's fused qkv projection.
    """

    def __init__(self, qkv: nn.Linear, rank: int):
        super().__init__()
        width = qkv.in_features
        self.qkv = qkv
        self.linear_a_q = nn.Linear(width, rank, bias=False)
        self.linear_b_q = nn.Linear(rank, width, bias=False)
        self.linear_a_v = nn.Linear(width, rank, bias=False)
        self.linear_b_v = nn.Linear(rank, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta_q = self.linear_b_q(self.linear_a_q(x))
        delta_v = self.linear_b_v(self.linear_a_v(x))
        delta = torch.cat([delta_q, torch.zeros_like(delta_q), delta_v], dim=-1)
        return self.qkv(x) + LORA_SCALE * delta


class LoRAViT(nn.Module):
    """RetiZero's ``LoRA_ViT`` container: the adapted ViT lives under ``lora_vit``."""

    def __init__(self, vit: nn.Module, rank: int):
        super().__init__()
        for block in vit.blocks:
            block.attn.qkv = LoRAQKV(block.attn.qkv, rank)
        self.lora_vit = vit

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.lora_vit(image)


def retfound_vit(*, depth: int, width: int, heads: int) -> nn.Module:
    """RETFound's ViT-L/16 as timm builds it, without a head: class-token output after the final norm."""
    ensure_torchvision()
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=VIT_IMAGE_SIZE,
        patch_size=VIT_PATCH_SIZE,
        embed_dim=width,
        depth=depth,
        num_heads=heads,
        mlp_ratio=VIT_MLP_RATIO,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=VIT_LAYER_NORM_EPS),
        num_classes=0,
        global_pool="token",
        weight_init="skip",  # every tensor is overwritten by the checkpoint
    )


class RetiZeroDualEncoder(nn.Module):
    """RetiZero's un-merged module tree, so that its state dict keys are exactly the published ones."""

    def __init__(self, text_config, *, depth: int, width: int, heads: int, lora_rank: int, embed_dim: int):
        super().__init__()
        vit = retfound_vit(depth=depth, width=width, heads=heads)
        self.vision_model = VisionTower(LoRAViT(vit, lora_rank), width, embed_dim)
        self.text_model = BertTextTower(text_config, embed_dim)
        self.logit_scale = nn.Parameter(torch.zeros(()))


def merged_image_encoder(
    published: Mapping[str, torch.Tensor], *, depth: int, width: int, heads: int, embed_dim: int
) -> VisionTower:
    """The export-ready image encoder: plain timm ViT with the LoRA merged, and the projection."""
    encoder = VisionTower(retfound_vit(depth=depth, width=width, heads=heads), width, embed_dim)
    state = {f"model.{k}": v for k, v in merge_lora_state(published).items()}
    projection_key = "vision_model.projection_head_vision.projection.weight"
    state["projection_head_vision.projection.weight"] = published[projection_key]
    load_exact(encoder, state, "merged RetiZero image encoder")
    return encoder.eval()


@register_teacher("retizero")
def load_retizero(
    checkpoint: str | Path | None = None,
    *,
    text_model_path: str | Path,
    caption: str | None = FLAIR_CAPTION,
    merge_lora: bool = True,
    vit_depth: int = VIT_DEPTH,
    vit_width: int = VIT_WIDTH,
    vit_heads: int = VIT_HEADS,
    lora_rank: int = LORA_RANK,
    embed_dim: int = EMBED_DIM,
) -> Teacher:
    """A RetiZero checkpoint (``RetiZero.pth``).

    ``text_model_path``: local directory with Bio_ClinicalBERT's config and tokenizer files.
    ``caption``: prompt template (``None``: embed texts verbatim). ``merge_lora``: merge the LoRA
    factors into the ViT (export) or keep the published un-merged modules. The ``vit_*``,
    ``lora_rank`` and ``embed_dim`` options exist for small test models; the defaults are the
    published architecture.
    """
    path = require_checkpoint("retizero", checkpoint)
    source = f"retizero checkpoint {path}"
    state = read_state_dict(path)
    drop_legacy_position_ids(state, source)
    config, tokenizer = load_text_config_and_tokenizer(text_model_path)
    arch = dict(depth=vit_depth, width=vit_width, heads=vit_heads)
    model = RetiZeroDualEncoder(config, lora_rank=lora_rank, embed_dim=embed_dim, **arch)
    load_exact(model, state, source)
    model.eval()
    image_encoder = merged_image_encoder(state, embed_dim=embed_dim, **arch) if merge_lora else model.vision_model
    return Teacher(
        family="retizero",
        name=path.stem,
        image_encoder=image_encoder,
        embed_texts=make_text_embedder(
            model.text_model, tokenizer, max_length=FLAIR_TEXT_MAX_LENGTH, caption=caption
        ),
        input_spec=RETIZERO_INPUT_SPEC,
        ensembling="mean",
        logit_scale=clamped_logit_scale(model.logit_scale),
        checkpoint_sha256=checkpoint_sha256(path),
    )
