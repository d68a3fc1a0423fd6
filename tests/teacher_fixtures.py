"""Builders shared by the teacher adapter tests: random weights, a tiny local BERT directory, and
FLAIR's text tower written the way FLAIR's own code computes it (FLAIR and RetiZero share it)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from converters.torch_compat import ensure_torchvision

ensure_torchvision()
import torchvision  # noqa: E402
from transformers import AutoTokenizer, BertConfig, BertModel  # noqa: E402

FLAIR_EMBED_DIM = 512  # proj_dim default of FLAIRModel (jusiro/FLAIR flair/modeling/model.py)
TINY_BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + (
    "a fundus photograph of the retina with diabetic retinopathy glaucoma healthy macular edema and no"
).split()


def randomise_(module: nn.Module, seed: int) -> nn.Module:
    """Move every weight and running statistic off its initial value, so each one must be loaded
    (a mis-mapped key then shows in the embeddings)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator) * 0.05
            if name.endswith("running_var"):
                tensor.copy_(1.0 + noise.abs())
            else:
                tensor.add_(noise)
    return module.eval()


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def write_tiny_bert(directory: Path) -> Path:
    """A Bio_ClinicalBERT-shaped local directory (config.json + vocab.txt, as that repository ships)
    with a 3-layer BERT, so that layers 1, 2 and the last are distinct."""
    directory.mkdir(parents=True, exist_ok=True)
    BertConfig(
        vocab_size=len(TINY_BERT_VOCAB), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=300,
    ).save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(TINY_BERT_VOCAB) + "\n")
    return directory


class Projection(nn.Module):
    """FLAIR's ``ProjectionLayer`` parameters: a bias-free ``projection``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim, bias=False)


def published_text_model(text_dir: Path) -> nn.Module:
    """FLAIR's ``text_model``: the BERT of ``text_dir`` and its projection head."""
    text_model = nn.Module()
    text_model.model = BertModel(BertConfig.from_pretrained(text_dir))
    text_model.projection_head_text = Projection(text_model.model.config.hidden_size, FLAIR_EMBED_DIM)
    return text_model


def reference_text_embedding(model: nn.Module, text_dir: Path, prompt: str, max_length: int) -> np.ndarray:
    """FLAIR's TextModel.tokenize + forward for one prompt."""
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    tokenizer.model_max_length = max_length
    tokens = tokenizer([prompt], truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        output = model.text_model.model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], output_hidden_states=True
        )
        layers = torch.stack([output.hidden_states[1], output.hidden_states[2], output.hidden_states[-1]])
        features = unit(layers.permute(1, 0, 2, 3).mean(2).mean(1))
        return unit(model.text_model.projection_head_text.projection(features)).numpy()


def published_flair(text_dir: Path, blocks=(3, 4, 6, 3), seed: int = 0) -> nn.Module:
    """FLAIRModel's module tree built directly from torchvision and transformers."""
    model = nn.Module()
    model.vision_model = nn.Module()
    model.vision_model.model = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, list(blocks))
    model.vision_model.model.fc = nn.Identity()
    model.vision_model.projection_head_vision = Projection(2048, FLAIR_EMBED_DIM)
    model.text_model = published_text_model(text_dir)
    model.logit_scale = nn.Parameter(torch.log(torch.tensor(1 / 0.07)))
    return randomise_(model, seed)


def published_state(model: nn.Module, *, legacy_position_ids: bool = True) -> dict[str, torch.Tensor]:
    """The state dict as FLAIR's transformers 4.27 saved it (with the position_ids buffer)."""
    state = dict(model.state_dict())
    if legacy_position_ids:
        positions = model.text_model.model.config.max_position_embeddings
        state["text_model.model.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
    return state
