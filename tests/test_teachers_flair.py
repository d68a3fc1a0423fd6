"""FLAIR / KeepFIT adapters: checkpoints written in the published layout load exactly and embed
like the model built directly (random weights; the published weights cannot be downloaded here)."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from converters.torch_compat import ensure_torchvision

ensure_torchvision()
import torchvision  # noqa: E402
from teacher_fixtures import (  # noqa: E402
    FLAIR_EMBED_DIM,
    published_flair,
    published_state,
    reference_text_embedding,
    unit,
    write_tiny_bert,
)

from converters.teachers import load_teacher  # noqa: E402
from converters.teachers.checkpoints import CheckpointLayoutError  # noqa: E402
from converters.teachers.flair import (  # noqa: E402
    FLAIR_INPUT_SPEC,
    KEEPFIT_TRAINING_ONLY_KEYS,
    apply_caption,
    clamped_logit_scale,
)

SMALL_BLOCKS = (1, 1, 1, 1)  # a ResNet with ResNet-50's key names and fewer blocks, for speed


def reference_image_embedding(model: nn.Module, image: torch.Tensor) -> np.ndarray:
    """FLAIR's VisionModel.forward with ProjectionLayer(projection=True, norm=True)."""
    with torch.no_grad():
        features = unit(model.vision_model.model(image))
        return unit(model.vision_model.projection_head_vision.projection(features)).numpy()


def keepfit_state(model: nn.Module, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    extra = {k: torch.randn(FLAIR_EMBED_DIM, FLAIR_EMBED_DIM, generator=generator) for k in KEEPFIT_TRAINING_ONLY_KEYS}
    return published_state(model) | extra


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("bio-clinicalbert"))


@pytest.fixture(scope="module")
def small_flair(text_dir) -> nn.Module:
    return published_flair(text_dir, SMALL_BLOCKS, seed=1)


@pytest.fixture
def save(tmp_path):
    def write(state, name: str = "flair_resnet.pth") -> Path:
        path = tmp_path / name
        torch.save(state, path)
        return path

    return write


IMAGE = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
PROMPTS = ["diabetic retinopathy", "A fundus photograph of a healthy retina", "glaucoma and macular edema"]


def test_flair_checkpoint_round_trip_matches_the_model(text_dir, save):
    model = published_flair(text_dir)  # the published ResNet-50
    path = save(published_state(model))
    teacher = load_teacher("flair", path, text_model_path=text_dir)

    with torch.no_grad():
        got = teacher.image_encoder(IMAGE).numpy()
    np.testing.assert_allclose(got, reference_image_embedding(model, IMAGE), atol=1e-6)

    texts = teacher.embed_texts(PROMPTS)
    expected = [
        reference_text_embedding(model, text_dir, "A fundus photograph of diabetic retinopathy", 77),
        reference_text_embedding(model, text_dir, "A fundus photograph of a healthy retina", 77),
        reference_text_embedding(model, text_dir, "A fundus photograph of glaucoma and macular edema", 77),
    ]
    np.testing.assert_allclose(texts, np.concatenate(expected), atol=1e-6)
    assert texts.dtype == np.float32 and texts.shape == (3, FLAIR_EMBED_DIM)

    assert teacher.family == "flair" and teacher.name == "flair_resnet"
    assert teacher.ensembling == "mean"
    assert teacher.logit_scale == pytest.approx(math.exp(model.logit_scale.item()), rel=1e-6)
    assert teacher.input_spec == FLAIR_INPUT_SPEC
    assert teacher.checkpoint_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_flair_reads_the_state_dict_as_safetensors(text_dir, small_flair, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in published_state(small_flair, legacy_position_ids=False).items()}, path)
    teacher = load_teacher("flair", path, text_model_path=text_dir, resnet_blocks=SMALL_BLOCKS)
    with torch.no_grad():
        got = teacher.image_encoder(IMAGE).numpy()
    np.testing.assert_allclose(got, reference_image_embedding(small_flair, IMAGE), atol=1e-6)


def test_keepfit_accepts_its_attention_keys_and_truncates_at_256_tokens(text_dir, small_flair, save):
    long_text = " ".join(["diabetic retinopathy with macular edema"] * 30)  # > 77 and < 256 tokens
    keepfit = load_teacher(
        "keepfit", save(keepfit_state(small_flair), "keepfit.pth"), text_model_path=text_dir,
        resnet_blocks=SMALL_BLOCKS,
    )
    flair = load_teacher(
        "flair", save(published_state(small_flair)), text_model_path=text_dir, resnet_blocks=SMALL_BLOCKS
    )

    with torch.no_grad():
        got = keepfit.image_encoder(IMAGE).numpy()
    np.testing.assert_allclose(got, reference_image_embedding(small_flair, IMAGE), atol=1e-6)
    prompt = "A fundus photograph of " + long_text
    np.testing.assert_allclose(
        keepfit.embed_texts([long_text]), reference_text_embedding(small_flair, text_dir, prompt, 256), atol=1e-6
    )
    np.testing.assert_allclose(
        flair.embed_texts([long_text]), reference_text_embedding(small_flair, text_dir, prompt, 77), atol=1e-6
    )
    assert not np.allclose(keepfit.embed_texts([long_text]), flair.embed_texts([long_text]), atol=1e-3)
    assert keepfit.family == "keepfit" and keepfit.ensembling == "mean"


def test_text_embeddings_depend_on_the_prompt_only(text_dir, small_flair, save):
    teacher = load_teacher(
        "flair", save(published_state(small_flair)), text_model_path=text_dir, resnet_blocks=SMALL_BLOCKS
    )
    together = teacher.embed_texts(PROMPTS)
    alone = np.concatenate([teacher.embed_texts([p]) for p in PROMPTS])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert teacher.embed_texts([]).shape == (0, FLAIR_EMBED_DIM)

    verbatim = load_teacher(
        "flair", save(published_state(small_flair), "again.pth"), text_model_path=text_dir,
        resnet_blocks=SMALL_BLOCKS, caption=None,
    )
    np.testing.assert_allclose(
        verbatim.embed_texts(["glaucoma"]), reference_text_embedding(small_flair, text_dir, "glaucoma", 77), atol=1e-6
    )


@pytest.mark.parametrize(
    ("edit", "family", "expected"),
    [
        # a KeepFIT checkpoint is not a FLAIR one: its training-only keys are unexpected there
        (lambda s: s | {k: torch.zeros(FLAIR_EMBED_DIM, FLAIR_EMBED_DIM) for k in KEEPFIT_TRAINING_ONLY_KEYS},
         "flair", "unexpected keys (4): attention.W_k.weight"),
        (lambda s: s, "keepfit", "lacks keepfit's training-only keys ['attention.W_q.weight'"),
        (lambda s: {k: v for k, v in s.items() if "projection_head_vision" not in k} | {"module.extra": torch.zeros(1)},
         "flair", "missing keys (1): vision_model.projection_head_vision.projection.weight"),
        (lambda s: {k: v for k, v in s.items() if "projection_head_vision" not in k} | {"module.extra": torch.zeros(1)},
         "flair", "unexpected keys (1): module.extra"),
        (lambda s: s | {"vision_model.projection_head_vision.projection.weight": torch.zeros(256, 2048)},
         "flair", "vision_model.projection_head_vision.projection.weight (256, 2048) (expected (512, 2048))"),
        (lambda s: s | {"text_model.model.embeddings.position_ids": torch.zeros(1, 300, dtype=torch.long)},
         "flair", "position_ids is not 0..n-1"),
        (lambda s: {"state_dict": s}, "flair", "expected a flat state dict"),
    ],
    ids=["keepfit-as-flair", "flair-as-keepfit", "missing", "unexpected", "shape", "position-ids", "nested"],
)
def test_layout_mismatches_are_reported_never_loaded_partially(text_dir, small_flair, save, edit, family, expected):
    path = save(edit(published_state(small_flair)))
    with pytest.raises(CheckpointLayoutError) as info:
        load_teacher(family, path, text_model_path=text_dir, resnet_blocks=SMALL_BLOCKS)
    assert expected in str(info.value)


def test_bad_arguments_say_what_is_needed(text_dir, small_flair, save, tmp_path):
    with pytest.raises(ValueError, match="no embedded default"):
        load_teacher("flair", None, text_model_path=text_dir)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_teacher("flair", save(published_state(small_flair)), text_model_path=tmp_path / "absent")
    with pytest.raises(ValueError, match=r"\[CLS\]"):
        load_teacher("flair", save(published_state(small_flair)), text_model_path=text_dir,
                     resnet_blocks=SMALL_BLOCKS, caption="fundus")


def test_caption_wraps_bare_descriptions_only():
    caption = "A fundus photograph of [CLS]"
    assert apply_caption("glaucoma", caption) == "A fundus photograph of glaucoma"
    worded = "a Fundus photograph of a healthy retina"
    assert apply_caption(worded, caption) == worded
    assert apply_caption("glaucoma", None) == "glaucoma"


def test_logit_scale_is_the_clamped_exponential():
    assert clamped_logit_scale(torch.tensor(math.log(1 / 0.07))) == pytest.approx(1 / 0.07, rel=1e-6)
    assert clamped_logit_scale(torch.tensor(7.0)) == pytest.approx(100.0, rel=1e-4)  # clamp at 4.6052
    assert clamped_logit_scale(torch.tensor(-2.0)) == 1.0


@pytest.mark.slow
def test_flair_image_encoder_exports_to_onnx(text_dir, small_flair, save, tmp_path):
    from converters.export.onnx_fp32 import export_onnx

    teacher = load_teacher(
        "flair", save(published_state(small_flair)), text_model_path=text_dir, resnet_blocks=SMALL_BLOCKS
    )
    assert export_onnx(teacher.image_encoder, (64, 64), tmp_path / "flair.onnx").is_file()


def test_input_spec_reproduces_flair_preprocessing(retina_rgb):
    """Our pipeline with FLAIR's spec against FLAIR's own preprocess_image (torchvision resize of the
    longest side to 512 with antialiasing, zero padding at the bottom/right), on a portrait crop."""
    from edge_retina.preprocess import Preprocessor

    photo = np.ascontiguousarray(retina_rgb[:, 100:1300])  # 1411 x 1200: padding goes to the right
    ours = Preprocessor(FLAIR_INPUT_SPEC).prepare(photo).tensor[0]

    image = torch.tensor(photo, dtype=torch.float32).permute(2, 0, 1)[None] / 255
    scale = max(image.shape[-2:]) / 512
    size = (int(image.shape[-2] / scale), int(image.shape[-1] / scale))
    image = torchvision.transforms.Resize(size, antialias=True)(image)
    flair = torch.nn.functional.pad(image, (0, 512 - image.shape[-1], 0, 512 - image.shape[-2]))[0].numpy()

    assert ours.shape == flair.shape == (3, 512, 512)
    assert np.abs(ours - flair).mean() < 0.003
    assert np.all(ours[:, :, size[1] + 1:] == 0) and np.all(flair[:, :, size[1]:] == 0)
