"""RET-CLIP / ViLReF adapters: round trips through each family's published checkpoint layout.

The reference towers come from ``cn_clip`` (Chinese-CLIP's own published code, which both families
copy), so the adapter (open_clip ViT + transformers BERT) is checked against an independent
implementation, tokenizer included (cn_clip's bundled Chinese RoBERTa vocab).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from teacher_fixtures import randomise_
from torch import nn

from converters.teachers import load_teacher
from converters.teachers.checkpoints import CheckpointLayoutError, checkpoint_sha256

# Chinese-CLIP's own code is the reference implementation.
cn_clip = pytest.importorskip("cn_clip.clip")
from cn_clip.clip.model import CLIP as ChineseClip  # noqa: E402

IMAGE_SIZE = 32
EMBED = 24
HIDDEN = 128  # two heads of 64, the published head width
TEXTS = [
    "糖尿病视网膜病变",
    "眼底照片显示“视盘水肿”",
    "Normal fundus, no Diabetic Retinopathy",
    "黄斑" * 60,  # longer than the 52-token context: truncated the Chinese-CLIP way
]


def _chinese_clip_towers(seed: int) -> ChineseClip:
    model = ChineseClip(
        embed_dim=EMBED, image_resolution=IMAGE_SIZE, vision_layers=2, vision_width=HIDDEN, vision_patch_size=8,
        vocab_size=len(cn_clip._tokenizer.vocab), text_attention_probs_dropout_prob=0.1, text_hidden_act="gelu",
        text_hidden_dropout_prob=0.1, text_hidden_size=HIDDEN, text_initializer_range=0.02,
        text_intermediate_size=2 * HIDDEN, text_max_position_embeddings=64, text_num_attention_heads=2,
        text_num_hidden_layers=2, text_type_vocab_size=2,
    )
    randomise_(model, seed)
    return model.eval()


def _head(hidden: int, middle: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, middle), nn.ReLU(), nn.Linear(middle, out))


class RetClipReference(nn.Module):
    """RET-CLIP's published module tree (sStonemason/RET-CLIP RET_CLIP/clip/model.py) around
    Chinese-CLIP's towers: three text heads, three scales, the two-eye image mappings."""

    def __init__(self, towers: ChineseClip, middle: int, mappings: str):
        super().__init__()
        self.visual, self.bert = towers.visual, towers.bert
        self.text_projection = _head(HIDDEN, middle, EMBED)
        self.text_projection_left = _head(HIDDEN, middle, EMBED)
        self.text_projection_right = _head(HIDDEN, middle, EMBED)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(90.0)))
        self.logit_scale_left = nn.Parameter(torch.tensor(math.log(42.0)))
        self.logit_scale_right = nn.Parameter(torch.tensor(math.log(17.0)))
        self.global_feature_mapping = nn.Linear(2 * EMBED, EMBED, bias=False)
        if mappings == "left/right":  # RET_CLIP/
            self.left_feature_mapping = nn.Linear(EMBED, EMBED, bias=False)
            self.right_feature_mapping = nn.Linear(EMBED, EMBED, bias=False)
        else:  # the older Code_of_RET-CLIP/ snapshot
            self.single_feature_mapping = nn.Linear(EMBED, EMBED)
        randomise_(self.text_projection_left, 7)

    def encode_left_text(self, text_ids: torch.Tensor) -> torch.Tensor:
        mask = text_ids.ne(cn_clip._tokenizer.vocab["[PAD]"])
        hidden = self.bert(text_ids, attention_mask=mask.float())[0]
        return self.text_projection_left(hidden[:, 0, :])


def _reference_texts(texts: list[str]) -> torch.Tensor:
    # Chinese-CLIP's evaluation path: _preprocess_text, then tokenize to 52 tokens.
    cleaned = [t.lower().replace("\u201c", '"').replace("\u201d", '"') for t in texts]
    return cn_clip.tokenize(cleaned, context_length=52)


def _normalise(x: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(x, dim=-1).detach().numpy()


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory) -> Path:
    """A local tokenizer directory: cn_clip's copy of the Chinese RoBERTa vocab."""
    directory = tmp_path_factory.mktemp("chinese-roberta")
    shutil.copy(Path(cn_clip.__file__).parent / "vocab.txt", directory / "vocab.txt")
    return directory


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def vilref_checkpoint(tmp_path_factory) -> tuple[Path, ChineseClip]:
    reference = _chinese_clip_towers(seed=3)
    path = tmp_path_factory.mktemp("vilref") / "vilref.pt"
    # ViLReF's training checkpoint: DDP-prefixed weights under "state_dict".
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 10, "step": 1234, "name": "vilref", "state_dict": state, "optimizer": {}}, path)
    return path, reference


def test_vilref_round_trip(vilref_checkpoint, vocab_dir, images):
    path, reference = vilref_checkpoint
    teacher = load_teacher("vilref", path, text_model_path=vocab_dir)

    with torch.no_grad():
        got_images = teacher.image_encoder(images).numpy()
        want_images = _normalise(reference.encode_image(images))
        want_texts = _normalise(reference.encode_text(_reference_texts(TEXTS)))
    np.testing.assert_allclose(got_images, want_images, atol=1e-5)
    np.testing.assert_allclose(teacher.embed_texts(TEXTS), want_texts, atol=1e-5)
    assert teacher.logit_scale == pytest.approx(float(reference.logit_scale.detach().exp()))
    assert teacher.ensembling == "mean_renormalised"
    assert teacher.checkpoint_sha256 == checkpoint_sha256(path)
    spec = teacher.input_spec
    assert (spec.size, spec.resize_mode, spec.interpolation, spec.fov_crop) == (
        (IMAGE_SIZE, IMAGE_SIZE), "stretch", "bicubic", False)
    assert spec.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert spec.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))


@pytest.mark.parametrize(
    "saved_as, middle, mappings",
    [("training", HIDDEN, "left/right"), ("bare", EMBED, "single")],
    ids=["RET_CLIP-training-checkpoint", "Code_of_RET-CLIP-bare-state-dict"],
)
def test_retclip_round_trip(tmp_path, vocab_dir, images, saved_as, middle, mappings):
    reference = RetClipReference(_chinese_clip_towers(seed=5), middle, mappings).eval()
    path = tmp_path / "retclip.pt"
    state = reference.state_dict()
    if saved_as == "training":
        torch.save({"epoch": 1, "step": 9, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save(state, path)

    teacher = load_teacher("retclip", path, text_model_path=vocab_dir)

    with torch.no_grad():
        # Zero-shot as published: the bare visual tower, the left-eye text head.
        want_images = _normalise(reference.visual(images))
        want_texts = _normalise(reference.encode_left_text(_reference_texts(TEXTS)))
        got_images = teacher.image_encoder(images).numpy()
    np.testing.assert_allclose(got_images, want_images, atol=1e-5)
    np.testing.assert_allclose(teacher.embed_texts(TEXTS), want_texts, atol=1e-5)
    assert teacher.logit_scale == pytest.approx(42.0)
    assert teacher.input_spec.resize_mode == "stretch" and not teacher.input_spec.fov_crop


def test_layout_mismatch_lists_missing_and_unexpected_keys(tmp_path, vilref_checkpoint, vocab_dir):
    path, reference = vilref_checkpoint
    with pytest.raises(CheckpointLayoutError) as error:  # a ViLReF checkpoint is not a RET-CLIP one
        load_teacher("retclip", path, text_model_path=vocab_dir)
    assert "text_projection_left.0.weight" in str(error.value) and "unexpected keys" in str(error.value)

    state = reference.state_dict()
    del state["bert.encoder.layer.1.output.dense.bias"]
    state["visual.extra_adapter.weight"] = torch.zeros(3)
    state["visual.ln_post.weight"] = torch.ones(HIDDEN + 1)
    broken = tmp_path / "broken.pt"
    torch.save({"state_dict": state}, broken)
    with pytest.raises(CheckpointLayoutError) as error:
        load_teacher("vilref", broken, text_model_path=vocab_dir)
    message = str(error.value)
    assert "missing keys (1): bert.encoder.layer.1.output.dense.bias" in message
    assert "unexpected keys (1): visual.extra_adapter.weight" in message
    assert "keys with other shapes (1): visual.ln_post.weight (129,) (expected (128,))" in message

    state = reference.state_dict()
    state["text_projection"] = torch.zeros(HIDDEN, EMBED + 1)
    torch.save({"state_dict": state}, broken)
    with pytest.raises(CheckpointLayoutError, match="image embeddings have 24 dimensions, text embeddings 25"):
        load_teacher("vilref", broken, text_model_path=vocab_dir)


def test_tokenizer_with_another_vocab_is_refused(tmp_path, vilref_checkpoint):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]))
    with pytest.raises(CheckpointLayoutError, match="7 tokens"):
        load_teacher("vilref", vilref_checkpoint[0], text_model_path=tmp_path)


def test_paths_are_required(vilref_checkpoint, vocab_dir):
    with pytest.raises(ValueError, match="no embedded default"):
        load_teacher("retclip", None, text_model_path=vocab_dir)
    with pytest.raises(ValueError, match="text_model_path"):
        load_teacher("vilref", vilref_checkpoint[0])


@pytest.mark.slow
def test_image_encoder_exports_to_onnx(tmp_path, vilref_checkpoint, vocab_dir):
    # RET-CLIP and ViLReF share this image encoder class; the export checks ONNX Runtime against torch.
    from converters.export.onnx_fp32 import export_onnx

    teacher = load_teacher("vilref", vilref_checkpoint[0], text_model_path=vocab_dir)
    assert export_onnx(teacher.image_encoder, teacher.input_spec.size, tmp_path / "vilref.onnx").is_file()
