"""CLIP-style adapters: round trips through OpenAI-layout (TorchScript and state-dict), EyeCLIP,
open_clip (model directory and named config) and Hugging Face CLIPModel checkpoints.

Each test builds a small model with random weights, writes it in the family's published layout,
loads it through ``load_teacher`` and compares embeddings with the module it was written from.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from converters.torch_compat import ensure_torchvision

ensure_torchvision()  # open_clip imports torchvision
import open_clip  # noqa: E402
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg  # noqa: E402
from teacher_fixtures import randomise_  # noqa: E402

from converters.teachers import load_teacher  # noqa: E402
from converters.teachers.checkpoints import CheckpointLayoutError, checkpoint_sha256  # noqa: E402

IMAGE_SIZE = 32
EMBED = 24
TEXTS = ["a fundus photograph of diabetic retinopathy", "Normal Retina.", "glaucoma " * 40]


def _tiny_openai_clip(seed: int) -> CLIP:
    """An OpenAI-layout CLIP (QuickGELU, 64-wide heads), small."""
    model = CLIP(
        EMBED,
        vision_cfg=CLIPVisionCfg(layers=2, width=128, patch_size=8, image_size=IMAGE_SIZE),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2),
        quick_gelu=True,
    )
    randomise_(model, seed)
    return model.eval()


class OpenAIArchive(nn.Module):
    """The module tree OpenAI's TorchScript releases script: the CLIP's own children and parameters
    plus the input_resolution/context_length/vocab_size tensors."""

    def __init__(self, clip: CLIP):
        super().__init__()
        for name, child in clip.named_children():
            self.add_module(name, child)
        for name, parameter in clip.named_parameters(recurse=False):
            self.register_parameter(name, parameter)
        for name, value in (("input_resolution", IMAGE_SIZE), ("context_length", 77), ("vocab_size", 49408)):
            self.register_buffer(name, torch.tensor(value))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


def _expected(model: nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        return (model.encode_image(images, normalize=True).numpy(),
                model.encode_text(tokens, normalize=True).numpy())


def _assert_matches(teacher, images, want_images, want_texts) -> None:
    with torch.no_grad():
        got_images = teacher.image_encoder(images).numpy()
    np.testing.assert_allclose(got_images, want_images, atol=1e-5)
    np.testing.assert_allclose(teacher.embed_texts(TEXTS), want_texts, atol=1e-5)
    assert teacher.ensembling == "mean_renormalised"


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def eyeclip_checkpoint(tmp_path_factory) -> tuple[Path, CLIP]:
    reference = _tiny_openai_clip(seed=4)
    state = dict(reference.state_dict())
    # EyeCLIP's visual tower also holds an MAE decoder (eyeclip/model.py MAE_decoder), saved with it.
    state["visual.decoder.mask_token"] = torch.zeros(1, 1, 16)
    state["visual.decoder.decoder_embed.weight"] = torch.zeros(16, 128)
    state["visual.decoder.decoder_blocks.0.attn.qkv.weight"] = torch.zeros(48, 16)
    path = tmp_path_factory.mktemp("eyeclip") / "checkpoint-eyeclip.pt"
    torch.save({"epoch": 3, "model_state_dict": state, "optimizer_state_dict": {}, "loss": 0.5}, path)
    return path, reference


@pytest.mark.parametrize("saved_as", ["torchscript", "fp16-state-dict"])
def test_openai_clip_round_trip(tmp_path, images, saved_as):
    reference = _tiny_openai_clip(seed=2)
    path = tmp_path / "ViT-tiny.pt"
    if saved_as == "torchscript":
        torch.jit.save(torch.jit.trace(OpenAIArchive(reference), images, check_trace=False), path)
    else:
        # OpenAI's state dicts keep matrices in float16: round the reference to the same values.
        with torch.no_grad():
            for parameter in reference.parameters():
                if parameter.ndim >= 2:
                    parameter.copy_(parameter.half().float())
        torch.save({k: v.half() if v.ndim >= 2 else v for k, v in reference.state_dict().items()}, path)

    teacher = load_teacher("openai_clip", path)

    _assert_matches(teacher, images, *_expected(reference, images, open_clip.tokenize(TEXTS)))
    assert teacher.logit_scale == pytest.approx(float(reference.logit_scale.detach().exp()))
    assert teacher.checkpoint_sha256 == checkpoint_sha256(path)
    spec = teacher.input_spec
    assert (spec.size, spec.resize_mode, spec.interpolation, spec.fov_crop) == (
        (IMAGE_SIZE, IMAGE_SIZE), "centre-crop", "bicubic", False)
    assert spec.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_eyeclip_round_trip_drops_only_the_mae_decoder(tmp_path, images, eyeclip_checkpoint):
    path, reference = eyeclip_checkpoint
    teacher = load_teacher("eyeclip", path)
    _assert_matches(teacher, images, *_expected(reference, images, open_clip.tokenize(TEXTS)))

    # The same weights as an OpenAI-layout checkpoint: the decoder is not OpenAI's, so it is refused.
    with pytest.raises(CheckpointLayoutError, match=r"unexpected keys \(3\): visual\.decoder\."):
        load_teacher("openai_clip", path)

    state = torch.load(path, weights_only=True)["model_state_dict"]
    del state["ln_final.bias"]
    state["text_adapter.weight"] = torch.zeros(2)
    broken = tmp_path / "broken.pt"
    torch.save({"model_state_dict": state}, broken)
    with pytest.raises(CheckpointLayoutError) as error:
        load_teacher("eyeclip", broken)
    assert "missing keys (1): ln_final.bias" in str(error.value)
    assert "unexpected keys (1): text_adapter.weight" in str(error.value)


def test_unreadable_checkpoints_are_named(tmp_path):
    resnet = tmp_path / "rn.pt"
    torch.save({"visual.layer1.0.conv1.weight": torch.zeros(1)}, resnet)
    with pytest.raises(CheckpointLayoutError, match="ResNet visual tower"):
        load_teacher("openai_clip", resnet)
    not_weights = tmp_path / "args.pt"
    torch.save({"epoch": 1, "args": {"lr": 0.1}}, not_weights)
    with pytest.raises(CheckpointLayoutError, match="no state dict found"):
        load_teacher("eyeclip", not_weights)
    with pytest.raises(ValueError, match="no embedded default"):
        load_teacher("openai_clip")


TINY_OPEN_CLIP_CFG = {
    "embed_dim": EMBED,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 40, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def _tiny_open_clip(seed: int) -> CLIP:
    model = CLIP(**TINY_OPEN_CLIP_CFG)  # open_clip's own defaults: nn.GELU, not OpenAI's QuickGELU
    randomise_(model, seed)
    return model.eval()


def test_open_clip_model_directory_round_trip(tmp_path, images):
    reference = _tiny_open_clip(seed=6)
    directory = tmp_path / "open-clip-tiny"
    directory.mkdir()
    preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear",
                  "resize_mode": "longest", "fill_color": 0}
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_OPEN_CLIP_CFG, "preprocess_cfg": preprocess}))
    torch.save(reference.state_dict(), directory / "open_clip_pytorch_model.bin")

    teacher = load_teacher("open_clip", directory)

    tokens = open_clip.SimpleTokenizer(context_length=40)(TEXTS)
    _assert_matches(teacher, images, *_expected(reference, images, tokens))
    spec = teacher.input_spec
    assert (spec.size, spec.resize_mode, spec.pad_position, spec.interpolation, spec.fov_crop) == (
        (IMAGE_SIZE, IMAGE_SIZE), "letterbox", "centre", "bilinear", False)
    assert spec.mean == pytest.approx((0.5, 0.5, 0.5)) and spec.std == pytest.approx((0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def named_tiny_config(tmp_path_factory) -> str:
    """A tiny config registered with open_clip under a name, like its built-in ones."""
    name = "edge-retina-test-tiny"
    config_file = tmp_path_factory.mktemp("open-clip-configs") / f"{name}.json"
    config_file.write_text(json.dumps(TINY_OPEN_CLIP_CFG))
    open_clip.add_model_config(config_file)
    return name


def test_open_clip_training_checkpoint_with_model_name(tmp_path, images, named_tiny_config):
    reference = _tiny_open_clip(seed=8)
    path = tmp_path / "epoch_32.pt"
    # open_clip's training checkpoint: DDP-prefixed weights under "state_dict".
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"epoch": 32, "name": "run", "state_dict": state}, path)

    teacher = load_teacher("open_clip", path, model_name=named_tiny_config)

    tokens = open_clip.SimpleTokenizer(context_length=40)(TEXTS)
    _assert_matches(teacher, images, *_expected(reference, images, tokens))
    assert teacher.input_spec.resize_mode == "centre-crop"  # open_clip's default 'shortest'
    with pytest.raises(ValueError, match="no release 'laion9000'"):
        load_teacher("open_clip", path, model_name=named_tiny_config, pretrained_tag="laion9000")
    with pytest.raises(ValueError, match="model_name"):
        load_teacher("open_clip", path)


def test_open_clip_sigmoid_models_are_refused(tmp_path):
    directory = tmp_path / "siglip-tiny"
    directory.mkdir()
    (directory / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": {**TINY_OPEN_CLIP_CFG, "init_logit_bias": -10}}))
    torch.save({}, directory / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointLayoutError, match="SigLIP"):
        load_teacher("open_clip", directory)


@pytest.fixture(scope="module")
def hf_clip_directory(tmp_path_factory) -> tuple[Path, nn.Module]:
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    directory = tmp_path_factory.mktemp("hf-clip-tiny")
    # A real CLIP tokenizer without a download: OpenAI's BPE vocab and merges, as open_clip bundles them
    # (open_clip spells the two special tokens its own way).
    bpe = open_clip.SimpleTokenizer()
    openai_specials = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {openai_specials.get(token, token): index for token, index in bpe.encoder.items()}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n")
    tokenizer = CLIPTokenizer(vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"))
    tokenizer.save_pretrained(directory)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                         pad_token_id=49407),
        vision_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                           image_size=IMAGE_SIZE, patch_size=8),
        projection_dim=EMBED,
    )
    reference = CLIPModel(config)
    randomise_(reference, 10)
    reference.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": IMAGE_SIZE},
        "do_center_crop": True, "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    }))
    return directory, reference.eval()


def test_hf_clip_round_trip(images, hf_clip_directory):
    directory, reference = hf_clip_directory
    teacher = load_teacher("hf_clip", directory)

    tokens = open_clip.tokenize(TEXTS)
    mask = torch.cumsum(tokens == 49407, dim=1) - (tokens == 49407).long() == 0  # up to and with the first EOT
    with torch.no_grad():
        output = reference(input_ids=tokens, attention_mask=mask.long(), pixel_values=images)
    _assert_matches(teacher, images, output.image_embeds.numpy(), output.text_embeds.numpy())
    assert teacher.logit_scale == pytest.approx(float(reference.logit_scale.detach().exp()))
    spec = teacher.input_spec
    assert (spec.size, spec.resize_mode, spec.interpolation, spec.fov_crop) == (
        (IMAGE_SIZE, IMAGE_SIZE), "centre-crop", "bicubic", False)


def test_hf_clip_missing_and_misshaped_weights_are_listed(tmp_path, hf_clip_directory):
    import shutil

    from safetensors.torch import load_file, save_file

    directory = tmp_path / "broken"
    shutil.copytree(hf_clip_directory[0], directory)
    state = load_file(directory / "model.safetensors")
    del state["visual_projection.weight"]
    state["vision_model.post_layernorm.weight"] = torch.ones(65)
    save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointLayoutError) as error:
        load_teacher("hf_clip", directory)
    assert "missing keys (1): visual_projection.weight" in str(error.value)
    assert "keys with other shapes (1): vision_model.post_layernorm.weight (65,) (expected (64,))" in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["openai_clip", "eyeclip", "open_clip", "hf_clip"])
def test_image_encoders_export_to_onnx(tmp_path, family, eyeclip_checkpoint, hf_clip_directory):
    from converters.export.onnx_fp32 import export_onnx

    if family == "open_clip":
        directory = tmp_path / "open-clip"
        directory.mkdir()
        (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP_CFG}))
        torch.save(_tiny_open_clip(seed=12).state_dict(), directory / "open_clip_pytorch_model.bin")
        checkpoint = directory
    elif family == "hf_clip":
        checkpoint = hf_clip_directory[0]
    else:
        checkpoint = eyeclip_checkpoint[0]
        if family == "openai_clip":
            checkpoint = tmp_path / "openai.pt"
            torch.save(eyeclip_checkpoint[1].state_dict(), checkpoint)
    teacher = load_teacher(family, checkpoint)
    # export_onnx compares ONNX Runtime's output with torch's.
    assert export_onnx(teacher.image_encoder, teacher.input_spec.size, tmp_path / f"{family}.onnx").is_file()
