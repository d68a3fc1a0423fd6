"""RetiZero adapter: a checkpoint in RetiZero's published layout (RETFound ViT with LoRA on q and v,
FLAIR-style towers) loads exactly, the LoRA merge changes nothing, and the merged encoder exports."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from converters.torch_compat import ensure_torchvision

ensure_torchvision()
from teacher_fixtures import (  # noqa: E402
    FLAIR_EMBED_DIM,
    Projection,
    published_text_model,
    randomise_,
    reference_text_embedding,
    unit,
    write_tiny_bert,
)
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from converters.teachers import load_teacher  # noqa: E402
from converters.teachers.checkpoints import CheckpointLayoutError  # noqa: E402
from converters.teachers.retizero import (  # noqa: E402
    LORA_FACTOR,
    LORA_RANK,
    RETIZERO_INPUT_SPEC,
    VIT_DEPTH,
    VIT_HEADS,
    VIT_WIDTH,
    LoRAQKV,
    LoRAViT,
    merge_lora_state,
    retfound_vit,
    timm_key,
)

DEPTH, WIDTH, HEADS, RANK = 2, 64, 4, 4  # a small ViT with RETFound's key names
SMALL = dict(vit_depth=DEPTH, vit_width=WIDTH, vit_heads=HEADS, lora_rank=RANK)
IMAGE = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))


class PublishedLoRAQKV(nn.Module):
    """RetiZero's _LoRA_qkv: adds B(A(x)) to the q and v slices of the fused qkv output in place."""

    def __init__(self, qkv: nn.Linear, rank: int):
        super().__init__()
        self.qkv = qkv
        self.dim = qkv.in_features
        self.linear_a_q = nn.Linear(self.dim, rank, bias=False)
        self.linear_b_q = nn.Linear(rank, self.dim, bias=False)
        self.linear_a_v = nn.Linear(self.dim, rank, bias=False)
        self.linear_b_v = nn.Linear(rank, self.dim, bias=False)

    def forward(self, x):
        qkv = self.qkv(x)
        qkv[:, :, : self.dim] += self.linear_b_q(self.linear_a_q(x))
        qkv[:, :, -self.dim :] += self.linear_b_v(self.linear_a_v(x))
        return qkv


def published_retizero(text_dir: Path, seed: int = 0) -> nn.Module:
    """CLIPRModel(vision_type="lora") built directly: RETFound's ViT (timm, head replaced by an
    identity), LoRA_ViT's surgery, FLAIR's projections and text tower. Randomising moves the LoRA B
    factors off zero, so the merge has something to merge."""
    vit = VisionTransformer(
        img_size=224, patch_size=16, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_ratio=4, qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )
    vit.head = nn.Identity()
    for block in vit.blocks:
        block.attn.qkv = PublishedLoRAQKV(block.attn.qkv, RANK)
    model = nn.Module()
    model.vision_model = nn.Module()
    model.vision_model.model = nn.Module()
    model.vision_model.model.lora_vit = vit
    model.vision_model.projection_head_vision = Projection(WIDTH, FLAIR_EMBED_DIM)
    model.text_model = published_text_model(text_dir)
    model.logit_scale = nn.Parameter(torch.log(torch.tensor(1 / 0.07)))
    return randomise_(model, seed)


def reference_image_embedding(model: nn.Module, image: torch.Tensor) -> np.ndarray:
    """RETFound's forward_features with global_pool=False (final norm, class token), then FLAIR's head."""
    vit = model.vision_model.model.lora_vit
    with torch.no_grad():
        x = vit.patch_embed(image)
        x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + vit.pos_embed
        for block in vit.blocks:
            x = block(x)
        features = unit(vit.norm(x)[:, 0])
        return unit(model.vision_model.projection_head_vision.projection(features)).numpy()


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("bio-clinicalbert"))


@pytest.fixture(scope="module")
def model(text_dir) -> nn.Module:
    return published_retizero(text_dir)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("retizero") / "RetiZero.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def teacher(checkpoint, text_dir):
    return load_teacher("retizero", checkpoint, text_model_path=text_dir, **SMALL)


def test_merged_teacher_embeds_like_the_published_model(teacher, model, text_dir):
    with torch.no_grad():
        got = teacher.image_encoder(IMAGE).numpy()
    np.testing.assert_allclose(got, reference_image_embedding(model, IMAGE), atol=2e-5)
    assert not any(isinstance(m, LoRAQKV) for m in teacher.image_encoder.modules())

    texts = teacher.embed_texts(["glaucoma", "a fundus photograph of a healthy retina"])
    expected = np.concatenate([
        reference_text_embedding(model, text_dir, "A fundus photograph of glaucoma", 77),
        reference_text_embedding(model, text_dir, "a fundus photograph of a healthy retina", 77),
    ])
    np.testing.assert_allclose(texts, expected, atol=1e-6)

    assert teacher.family == "retizero" and teacher.name == "RetiZero"
    assert teacher.ensembling == "mean"
    assert teacher.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()), rel=1e-6)
    assert teacher.input_spec == RETIZERO_INPUT_SPEC


def test_merged_encoder_equals_the_unmerged_one(teacher, checkpoint, text_dir):
    unmerged = load_teacher("retizero", checkpoint, text_model_path=text_dir, merge_lora=False, **SMALL)
    assert sum(isinstance(m, LoRAQKV) for m in unmerged.image_encoder.modules()) == DEPTH
    with torch.no_grad():
        np.testing.assert_allclose(
            teacher.image_encoder(IMAGE).numpy(), unmerged.image_encoder(IMAGE).numpy(), atol=2e-5
        )
    # The merged backbone is a plain timm ViT: exactly timm's keys, no LoRA.
    plain = retfound_vit(depth=DEPTH, width=WIDTH, heads=HEADS)
    assert list(teacher.image_encoder.model.state_dict()) == list(plain.state_dict())


def test_key_table_maps_every_published_backbone_key(model):
    published = list(model.state_dict())
    mapped = [timm_key(k) for k in published]
    backbone = [t for k, t in zip(published, mapped) if k.startswith("vision_model.model.")]
    assert None not in backbone
    assert backbone.count(LORA_FACTOR) == 4 * DEPTH
    timm_keys = list(retfound_vit(depth=DEPTH, width=WIDTH, heads=HEADS).state_dict())
    assert sorted(t for t in backbone if t != LORA_FACTOR) == sorted(timm_keys)
    assert all(t is None for k, t in zip(published, mapped) if not k.startswith("vision_model.model."))

    assert timm_key("vision_model.model.lora_vit.blocks.3.attn.qkv.qkv.weight") == "blocks.3.attn.qkv.weight"
    assert timm_key("vision_model.model.lora_vit.blocks.3.attn.qkv.qkv.bias") == "blocks.3.attn.qkv.bias"
    assert timm_key("vision_model.model.lora_vit.blocks.0.attn.qkv.linear_b_v.weight") == LORA_FACTOR
    assert timm_key("vision_model.model.lora_vit.blocks.0.attn.proj.weight") == "blocks.0.attn.proj.weight"
    assert timm_key("vision_model.model.lora_vit.pos_embed") == "pos_embed"
    assert timm_key("vision_model.projection_head_vision.projection.weight") is None


def test_merge_adds_b_times_a_to_the_q_and_v_rows_only(model):
    state = model.state_dict()
    merged = merge_lora_state(state)
    prefix = "vision_model.model.lora_vit.blocks.1.attn.qkv."
    base, new = state[prefix + "qkv.weight"], merged["blocks.1.attn.qkv.weight"]
    delta_q = state[prefix + "linear_b_q.weight"] @ state[prefix + "linear_a_q.weight"]
    delta_v = state[prefix + "linear_b_v.weight"] @ state[prefix + "linear_a_v.weight"]
    torch.testing.assert_close(new[:WIDTH], base[:WIDTH] + delta_q)
    torch.testing.assert_close(new[WIDTH : 2 * WIDTH], base[WIDTH : 2 * WIDTH])
    torch.testing.assert_close(new[2 * WIDTH :], base[2 * WIDTH :] + delta_v)
    assert delta_q.abs().max() > 1e-3  # the test model's LoRA is not a no-op
    torch.testing.assert_close(merged["blocks.1.attn.qkv.bias"], state[prefix + "qkv.bias"])


@pytest.mark.parametrize(
    ("edit", "options", "expected"),
    [
        (lambda s: s, dict(SMALL, lora_rank=8),
         "vision_model.model.lora_vit.blocks.0.attn.qkv.linear_a_q.weight (4, 64) (expected (8, 64))"),
        (lambda s: {k: v for k, v in s.items() if not k.endswith("blocks.1.attn.qkv.linear_a_v.weight")}, SMALL,
         "missing keys (1): vision_model.model.lora_vit.blocks.1.attn.qkv.linear_a_v.weight"),
        # a plain RETFound/FLAIR-style ViT checkpoint (no LoRA surgery) is not RetiZero's layout
        (lambda s: {k.replace("attn.qkv.qkv.", "attn.qkv."): v for k, v in s.items()}, SMALL,
         "unexpected keys (4): vision_model.model.lora_vit.blocks.0.attn.qkv.bias"),
    ],
    ids=["rank", "missing-factor", "no-lora"],
)
def test_layout_mismatches_are_reported(model, text_dir, tmp_path, edit, options, expected):
    path = tmp_path / "RetiZero.pth"
    torch.save(edit(model.state_dict()), path)
    with pytest.raises(CheckpointLayoutError) as info:
        load_teacher("retizero", path, text_model_path=text_dir, **options)
    assert expected in str(info.value)


def test_default_architecture_is_retfound_vit_large_with_rank_8_lora():
    with torch.device("meta"):  # shapes only: no 300M-parameter allocation
        backbone = LoRAViT(retfound_vit(depth=VIT_DEPTH, width=VIT_WIDTH, heads=VIT_HEADS), LORA_RANK)
    shapes = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    assert shapes["lora_vit.patch_embed.proj.weight"] == (1024, 3, 16, 16)
    assert shapes["lora_vit.pos_embed"] == (1, 197, 1024)  # 14 x 14 patches + class token at 224 px
    assert shapes["lora_vit.blocks.23.attn.qkv.qkv.weight"] == (3072, 1024)
    assert shapes["lora_vit.blocks.23.attn.qkv.linear_a_q.weight"] == (8, 1024)
    assert shapes["lora_vit.blocks.23.mlp.fc1.weight"] == (4096, 1024)
    assert "lora_vit.blocks.24.norm1.weight" not in shapes and not any(".head." in k for k in shapes)
    assert shapes["lora_vit.norm.weight"] == (1024,)


@pytest.mark.slow
def test_merged_image_encoder_exports_to_onnx(teacher, tmp_path):
    from converters.export.onnx_fp32 import export_onnx

    assert export_onnx(teacher.image_encoder, RETIZERO_INPUT_SPEC.size, tmp_path / "retizero.onnx").is_file()


def test_input_spec_reproduces_retizero_preprocessing(retina_rgb):
    """Our pipeline with RetiZero's spec against its own: PIL Resize((224, 224)), ToTensor, ImageNet
    normalisation, on a portrait crop (stretched, as RetiZero does)."""
    from PIL import Image

    from edge_retina.preprocess import Preprocessor

    photo = np.ascontiguousarray(retina_rgb[:, 100:1300])
    ours = Preprocessor(RETIZERO_INPUT_SPEC).prepare(photo).tensor[0]
    resized = np.asarray(Image.fromarray(photo).resize((224, 224), Image.BILINEAR), np.float32) / 255
    mean, std = np.asarray(RETIZERO_INPUT_SPEC.mean), np.asarray(RETIZERO_INPUT_SPEC.std)
    retizero = ((resized - mean) / std).transpose(2, 0, 1)
    assert ours.shape == retizero.shape == (3, 224, 224)
    assert np.abs(ours - retizero).mean() < 0.015
