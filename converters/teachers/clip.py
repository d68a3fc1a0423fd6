"""CLIP-style teachers: OpenAI-layout checkpoints (OpenAI CLIP, EyeCLIP), open_clip checkpoints and
Hugging Face ``CLIPModel`` directories.

Layout facts, with where they come from:

- **OpenAI layout** (``openai_clip``, ``eyeclip``): ``visual.conv1.weight`` (no bias),
  ``visual.class_embedding``, ``visual.positional_embedding``, ``visual.ln_pre.*``,
  ``visual.transformer.resblocks.<i>.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj,
  ln_2, mlp.c_fc, mlp.c_proj}``, ``visual.ln_post.*``, ``visual.proj``; the text tower
  ``token_embedding.weight``, ``positional_embedding``, ``transformer.resblocks.<i>.*``, ``ln_final.*``,
  ``text_projection``; and ``logit_scale``, the log of the logit multiplier. The architecture follows
  from tensor shapes (width from ``visual.conv1``, patch from its kernel, grid from the positional
  embedding, heads = width // 64), activations are QuickGELU, the image embedding is ``ln_post`` of the
  class token times ``proj`` and the text embedding is ``ln_final`` at the end-of-text token (the
  highest token id) times ``text_projection`` (Michi-3000/EyeCLIP eyeclip/model.py ``build_model``,
  ``CLIP.encode_text``; open_clip model.py ``build_model_from_openai_state_dict``). OpenAI publishes
  TorchScript archives whose state dict adds ``input_resolution``, ``context_length`` and
  ``vocab_size`` (open_clip factory.py ``load_state_dict``). Only ViT visual towers are supported here
  (ResNet CLIPs load through ``open_clip`` with their model name).
- **EyeCLIP** = the OpenAI layout, saved as ``{"model_state_dict": ...}`` by its training script and
  loaded with ``strict=False`` for zero-shot; its visual tower also carries an MAE decoder
  (``visual.decoder.*``) that only its training uses (EyeCLIP CLIP_ft_all_1enc_all.py, zero_shot.py,
  eyeclip/model.py ``MAE_decoder``). Published backbone: ViT-B/32 at 224.
- **Tokenizer** of both: OpenAI's byte-level BPE, 77 tokens, which open_clip bundles (works offline).
- **open_clip**: the model is named by an open_clip config (``model_name``), or comes as a directory
  holding ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) and weights, the layout
  open_clip exports to the Hugging Face hub. Training checkpoints nest the weights under
  ``"state_dict"`` with a DDP ``module.`` prefix (open_clip factory.py ``load_state_dict``).
- **Hugging Face** ``CLIPModel``: ``config.json`` + ``model.safetensors``/``pytorch_model.bin`` +
  tokenizer files + ``preprocessor_config.json``; image embedding = ``visual_projection`` of the vision
  model's pooled output, text embedding = ``text_projection`` of the text model's pooled output
  (transformers models/clip/modeling_clip.py).

Preprocessing: CLIP resizes the shortest side to 224 with bicubic interpolation, centre-crops
224x224 and normalises with the OpenAI mean/std (EyeCLIP CLIP_ft_all_1enc_all.py ``_transform``).
Our field-of-view crop stays **off** for all of these families: their own pipelines never crop to the
fundus disc, so cropping would show the model framings it was not trained on.

Prompts are ensembled the CLIP way (``mean_renormalised``: average the normalised template embeddings,
then renormalise); ``logit_scale`` is ``exp`` of the stored log scale.

Checkpoints are read and loaded exactly by :mod:`converters.teachers.checkpoints`; this module also
holds the CLIP pieces the Chinese-CLIP adapters (``retclip``) reuse: the OpenAI-layout ViT read off
tensor shapes, the CLIP input spec and the embedding wrappers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

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
    layout_error,
    load_exact,
    read_state_dict,
    require_checkpoint,
    require_keys,
    strip_prefix,
)

ensure_torchvision()  # open_clip and transformers import torchvision

import open_clip  # noqa: E402
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg  # noqa: E402
from open_clip.transformer import QuickGELU, VisionTransformer  # noqa: E402

#: OpenAI CLIP's normalisation (open_clip constants.py; the same numbers in every CLIP-derived repo).
CLIP_MEAN = tuple(open_clip.OPENAI_DATASET_MEAN)
CLIP_STD = tuple(open_clip.OPENAI_DATASET_STD)
#: Attention head width the OpenAI and Chinese-CLIP code derive head counts from (heads = width // 64).
HEAD_WIDTH = 64
#: Prompts embedded per forward pass on the host.
TEXT_BATCH = 64


# --- encoders ------------------------------------------------------------------------------------------


class NormalisedImageEncoder(nn.Module):
    """The ``Teacher.image_encoder`` contract: normalised image (N, 3, H, W) -> unit embedding (N, D)."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.tower(image), dim=-1)


def batched_text_embedder(encode: Callable[[list[str]], torch.Tensor]) -> Callable[[list[str]], np.ndarray]:
    """Wrap ``encode`` (texts -> unnormalised embeddings) into ``Teacher.embed_texts``."""

    def embed_texts(texts: list[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            raise ValueError("embed_texts needs at least one text")
        with torch.inference_mode():
            chunks = [F.normalize(encode(texts[i : i + TEXT_BATCH]).float(), dim=-1)
                      for i in range(0, len(texts), TEXT_BATCH)]
        return torch.cat(chunks).numpy()

    return embed_texts


# --- OpenAI layout: openai_clip, eyeclip ---------------------------------------------------------------

_OPENAI_NESTING = ("state_dict", "model_state_dict")
#: Non-weight entries of OpenAI's TorchScript archives.
_OPENAI_ARCHIVE_METADATA = ("input_resolution", "context_length", "vocab_size")


def openai_vit_config(state_dict: dict[str, torch.Tensor], source: str) -> CLIPVisionCfg:
    """The ViT of an OpenAI-layout ``visual.*`` tower, read off its tensor shapes (heads = width // 64).

    ``source`` names the checkpoint in errors.
    """
    if "visual.layer1.0.conv1.weight" in state_dict:
        raise CheckpointLayoutError(
            f"{source} has a ResNet visual tower; only ViT towers are supported here "
            "(load ResNet CLIPs with the 'open_clip' family and their model name, e.g. RN50-quickgelu)"
        )
    require_keys(state_dict, ("visual.conv1.weight", "visual.positional_embedding", "visual.proj"), source)
    width, _, patch, _ = state_dict["visual.conv1.weight"].shape
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    layers = len({k.split(".")[3] for k in state_dict if k.startswith("visual.transformer.resblocks.")})
    return CLIPVisionCfg(
        layers=layers, width=width, head_width=HEAD_WIDTH, patch_size=patch, image_size=patch * grid
    )


def build_openai_vit(config: CLIPVisionCfg, output_dim: int) -> VisionTransformer:
    """open_clip's ViT with OpenAI's choices (QuickGELU, class-token pooling): OpenAI's key names."""
    return VisionTransformer(
        image_size=config.image_size,
        patch_size=config.patch_size,
        width=config.width,
        layers=config.layers,
        heads=config.width // config.head_width,
        mlp_ratio=config.mlp_ratio,
        output_dim=output_dim,
        act_layer=QuickGELU,
    )


def clip_input_spec(
    size: int | tuple[int, int],
    resize_mode: str = "centre-crop",
    interpolation: str = "bicubic",
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
    pad_value: int = 0,
) -> InputSpec:
    """A CLIP-family input spec: OpenAI's centre crop, bicubic, mean/std unless told otherwise."""
    height, width = (size, size) if isinstance(size, int) else size
    return InputSpec(
        size=(height, width),
        resize_mode=resize_mode,
        pad_position="centre",
        pad_value=pad_value,
        interpolation=interpolation,
        fov_crop=False,  # see the module docstring: CLIP-family pipelines never crop to the fundus disc
        colour_order="RGB",
        scale=1.0 / 255.0,
        mean=tuple(mean),
        std=tuple(std),
    )


def _load_openai_layout(family: str, checkpoint: str | Path | None, unused: tuple[str, ...]) -> Teacher:
    path = require_checkpoint(family, checkpoint)
    source = f"{family} checkpoint {path}"
    state_dict = strip_prefix(read_state_dict(path, _OPENAI_NESTING), "module.")
    state_dict = {k: v for k, v in state_dict.items() if k not in _OPENAI_ARCHIVE_METADATA}
    vision_cfg = openai_vit_config(state_dict, source)
    text_keys = ("text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight")
    require_keys(state_dict, text_keys, source)
    text_width = state_dict["ln_final.weight"].shape[0]
    text_cfg = CLIPTextCfg(
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        width=text_width,
        heads=text_width // HEAD_WIDTH,
        layers=len({k.split(".")[2] for k in state_dict if k.startswith("transformer.resblocks.")}),
    )
    model = CLIP(state_dict["text_projection"].shape[1], vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=True)
    load_exact(model, state_dict, source, unused=unused)
    model.eval()
    tokenizer = open_clip.SimpleTokenizer(context_length=text_cfg.context_length)
    return Teacher(
        family=family,
        name=path.stem,
        image_encoder=NormalisedImageEncoder(model.visual).eval(),
        embed_texts=batched_text_embedder(lambda texts: model.encode_text(tokenizer(texts))),
        input_spec=clip_input_spec(vision_cfg.image_size),
        ensembling="mean_renormalised",
        logit_scale=float(model.logit_scale.detach().exp()),
        checkpoint_sha256=checkpoint_sha256(path),
    )


@register_teacher("openai_clip")
def load_openai_clip(checkpoint: str | Path | None = None) -> Teacher:
    """An OpenAI-layout CLIP checkpoint: TorchScript archive, plain state dict, or nested under
    ``state_dict``/``model_state_dict``."""
    return _load_openai_layout("openai_clip", checkpoint, ())


@register_teacher("eyeclip")
def load_eyeclip(checkpoint: str | Path | None = None) -> Teacher:
    """An EyeCLIP checkpoint (``{"model_state_dict": ...}``); its MAE decoder is dropped."""
    return _load_openai_layout("eyeclip", checkpoint, ("visual.decoder.",))


# --- open_clip ------------------------------------------------------------------------------------------

#: Weight files of an open_clip model directory, in open_clip's order of preference
#: (open_clip factory.py ``_find_checkpoint_in_dir``).
_OPEN_CLIP_WEIGHT_FILES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
)
#: open_clip's resize modes (transform.py ``image_transform``) in InputSpec terms: 'shortest' resizes the
#: short side and centre-crops, 'longest' resizes the long side and pads around the centre, 'squash'
#: resizes both sides.
_OPEN_CLIP_RESIZE = {"shortest": "centre-crop", "longest": "letterbox", "squash": "stretch"}


def _open_clip_input_spec(preprocess: dict) -> InputSpec:
    mode, interpolation = preprocess["resize_mode"], preprocess["interpolation"]
    if mode not in _OPEN_CLIP_RESIZE or interpolation not in ("bicubic", "bilinear"):
        raise CheckpointLayoutError(
            f"open_clip preprocessing {mode!r}/{interpolation!r} has no InputSpec equivalent"
        )
    size = preprocess["size"]
    return clip_input_spec(
        tuple(size) if isinstance(size, (list, tuple)) else int(size),
        resize_mode=_OPEN_CLIP_RESIZE[mode],
        interpolation=interpolation,
        mean=preprocess["mean"],
        std=preprocess["std"],
        pad_value=int(preprocess.get("fill_color", 0)),
    )


@register_teacher("open_clip")
def load_open_clip(
    checkpoint: str | Path | None = None, *, model_name: str | None = None, pretrained_tag: str | None = None
) -> Teacher:
    """An open_clip model.

    ``checkpoint`` is either a directory with ``open_clip_config.json`` and weights (open_clip's hub
    layout), or a weights file together with ``model_name`` (an open_clip config such as
    ``"ViT-B-16"``). ``pretrained_tag`` (e.g. ``"laion2b_s34b_b88k"``) picks that release's
    preprocessing from open_clip's table; nothing is downloaded.
    """
    path = require_checkpoint("open_clip", checkpoint)
    if path.is_dir():
        if model_name is not None or pretrained_tag is not None:
            raise ValueError("open_clip: a model directory has its own config; drop model_name/pretrained_tag")
        if not (path / "open_clip_config.json").is_file():
            raise CheckpointNotFoundError(f"open_clip: {path} has no open_clip_config.json")
        weights = next((path / n for n in _OPEN_CLIP_WEIGHT_FILES if (path / n).is_file()), None)
        if weights is None:
            raise CheckpointNotFoundError(f"open_clip: no weights in {path} (looked for {_OPEN_CLIP_WEIGHT_FILES})")
        identifier, preprocess_override = f"local-dir:{path}", None
        sha256 = checkpoint_sha256(path, ["open_clip_config.json", weights.name])
    else:
        if model_name is None:
            raise ValueError("open_clip: a weights file needs model_name= (an open_clip config, e.g. ViT-B-16)")
        if model_name not in open_clip.list_models():
            raise ValueError(f"open_clip: unknown model_name {model_name!r}; see open_clip.list_models()")
        preprocess_override = None
        if pretrained_tag is not None:
            tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained_tag)
            if not tag_cfg:
                raise ValueError(
                    f"open_clip: no release {pretrained_tag!r} of {model_name}; known: "
                    f"{open_clip.list_pretrained_tags_by_model(model_name)}"
                )
            fields = ("mean", "std", "interpolation", "resize_mode")
            preprocess_override = {k: tag_cfg[k] for k in fields if k in tag_cfg}
        identifier, weights, sha256 = model_name, path, checkpoint_sha256(path)
    # load_weights=False / pretrained_text=False: build the architecture only, never download.
    model = open_clip.create_model(identifier, load_weights=False, pretrained_text=False,
                                   force_preprocess_cfg=preprocess_override)
    if getattr(model, "logit_bias", None) is not None:
        raise CheckpointLayoutError(
            f"open_clip: {identifier} is a sigmoid-loss (SigLIP) model; its scores are sigmoid(scale * cos + "
            "bias), not the softmax over prompts the bundle computes"
        )
    state_dict = strip_prefix(read_state_dict(weights, ("state_dict",)), "module.")
    load_exact(model, state_dict, f"open_clip checkpoint {weights} ({identifier})")
    model.eval()
    tokenizer = open_clip.get_tokenizer(identifier)
    return Teacher(
        family="open_clip",
        name=path.name if path.is_dir() else f"{model_name}-{path.stem}",
        image_encoder=NormalisedImageEncoder(model.visual).eval(),
        embed_texts=batched_text_embedder(lambda texts: model.encode_text(tokenizer(texts))),
        input_spec=_open_clip_input_spec(open_clip.get_model_preprocess_cfg(model)),
        ensembling="mean_renormalised",
        logit_scale=float(model.logit_scale.detach().exp()),
        checkpoint_sha256=sha256,
    )


# --- Hugging Face CLIPModel -----------------------------------------------------------------------------

#: PIL resampling codes used in preprocessor_config.json (PIL.Image.Resampling).
_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}
#: transformers CLIPImageProcessor defaults (models/clip/image_processing_clip.py).
_HF_PREPROCESS_DEFAULTS = {
    "do_resize": True, "size": {"shortest_edge": 224},
    "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
    "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
}


def _hf_input_spec(directory: Path) -> InputSpec:
    config_path = directory / "preprocessor_config.json"
    config = dict(_HF_PREPROCESS_DEFAULTS)
    if config_path.is_file():
        config.update(json.loads(config_path.read_text()))
    size, crop = config["size"], config["crop_size"]
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    resample = config["resample"]
    # CLIP's "resize the short side to S, then crop S x S" is our centre-crop; a crop smaller than the
    # resize (ImageNet-style crop_pct) is not expressible as one InputSpec.
    shortest = size.get("shortest_edge") if isinstance(size, dict) else size
    steps = all(config[k] for k in ("do_resize", "do_center_crop", "do_rescale", "do_normalize"))
    if (not steps or shortest != min(crop["height"], crop["width"]) or resample not in _PIL_RESAMPLE
            or abs(config["rescale_factor"] - 1 / 255) > 1e-12):
        raise CheckpointLayoutError(
            f"hf_clip: preprocessor_config.json ({json.dumps(config)}) has no InputSpec equivalent"
        )
    return clip_input_spec((crop["height"], crop["width"]), interpolation=_PIL_RESAMPLE[resample],
                           mean=config["image_mean"], std=config["image_std"])


class _HFImageTower(nn.Module):
    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module):
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(pixel_values=image).pooler_output)


@register_teacher("hf_clip")
def load_hf_clip(checkpoint: str | Path | None = None) -> Teacher:
    """A Hugging Face ``CLIPModel`` directory, read with ``local_files_only=True`` (never a download)."""
    directory = require_checkpoint("hf_clip", checkpoint)
    from transformers import AutoConfig, AutoTokenizer, CLIPModel

    if not (directory / "config.json").is_file():
        raise CheckpointNotFoundError(f"hf_clip: {directory} is not a Hugging Face model directory (no config.json)")
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    if config.model_type != "clip":
        raise CheckpointLayoutError(f"hf_clip: {directory} holds a {config.model_type!r} model, not 'clip'")
    # ignore_mismatched_sizes: report mis-shaped keys with the others below instead of transformers'
    # bare RuntimeError; the model is never used when any key is off.
    model, info = CLIPModel.from_pretrained(
        directory, local_files_only=True, output_loading_info=True, dtype=torch.float32,
        ignore_mismatched_sizes=True,
    )
    # transformers lists a mis-shaped key as (name, checkpoint shape, model shape).
    mismatched = [f"{name} {tuple(got)} (expected {tuple(want)})" for name, got, want in info["mismatched_keys"]]
    if info["missing_keys"] or info["unexpected_keys"] or mismatched:
        raise layout_error(f"hf_clip (CLIPModel) checkpoint {directory}", missing=list(info["missing_keys"]),
                           unexpected=list(info["unexpected_keys"]), mismatched=mismatched)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    max_length = config.text_config.max_position_embeddings

    def encode(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        text = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return model.text_projection(text.pooler_output)

    # Every weights file (sharded checkpoints too) and its index, if any, go into the digest.
    weight_files = [p.name for p in directory.iterdir()
                    if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")]
    return Teacher(
        family="hf_clip",
        name=directory.name,
        image_encoder=NormalisedImageEncoder(_HFImageTower(model.vision_model, model.visual_projection)).eval(),
        embed_texts=batched_text_embedder(encode),
        input_spec=_hf_input_spec(directory),
        ensembling="mean_renormalised",
        logit_scale=float(model.logit_scale.detach().exp()),
        checkpoint_sha256=checkpoint_sha256(directory, ["config.json", *weight_files]),
    )
