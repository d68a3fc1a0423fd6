"""RET-CLIP and ViLReF: retinal teachers built on Chinese-CLIP (ViT-B/16 image tower at 224, Chinese
RoBERTa text tower).

Layout facts, with where they come from:

- **Common towers** (OFA-Sys/Chinese-CLIP cn_clip/clip/model.py; both repos copy it): ``visual.*`` is
  OpenAI's ViT layout (``VisualTransformer``: ``conv1`` without bias, ``class_embedding``,
  ``positional_embedding``, ``ln_pre``, ``transformer.resblocks.<i>`` with ``nn.MultiheadAttention``
  and a QuickGELU MLP, ``ln_post``, ``proj``; image embedding = ``ln_post`` of the class token times
  ``proj``). ``bert.*`` is a BERT whose keys are transformers' ``BertModel`` without its pooler:
  ``bert.embeddings.{word,position,token_type}_embeddings``, ``bert.embeddings.LayerNorm``,
  ``bert.encoder.layer.<i>.{attention.self.{query,key,value}, attention.output.{dense,LayerNorm},
  intermediate.dense, output.{dense,LayerNorm}}`` (cn_clip/clip/modeling_bert.py: the pooler is
  commented out, and every loader drops ``bert.pooler.*``); erf GELU, LayerNorm eps 1e-12. Head counts
  are width // 64 in every published config (RET_CLIP/clip/model_configs: ViT-B-16 768 wide,
  vision_head_width 64; RoBERTa-wwm-ext-base-chinese 768 hidden / 12 heads, vocab 21128), so the
  architecture is read off the checkpoint's tensor shapes.
- **Text embedding**: the last hidden state at ``[CLS]`` with padding masked out (``ids != [PAD]``),
  then the family's head (``CLIP.encode_text`` in both repos).
- **ViLReF** (T6Yang/ViLReF ViLReF/clip/model.py): one head, ``text_projection``, a
  (hidden, embed) matrix; ``logit_scale`` is the log multiplier.
- **RET-CLIP** (sStonemason/RET-CLIP RET_CLIP/clip/model.py): three MLP heads ``text_projection``
  (patient level), ``text_projection_left`` and ``text_projection_right``, each
  ``Sequential(Linear, ReLU, Linear)`` (keys ``.0.*`` and ``.2.*``; the middle width is hidden in
  RET_CLIP/ and embed in the older Code_of_RET-CLIP/ snapshot, so it is read off the checkpoint);
  ``logit_scale``, ``logit_scale_left``, ``logit_scale_right``; and image-side mappings for its
  two-eye training (``global_feature_mapping``, ``left_feature_mapping``, ``right_feature_mapping``,
  or ``single_feature_mapping`` in the older snapshot), which zero-shot does not use.
- **RET-CLIP zero-shot** (RET_CLIP/eval/zeroshot_evaluation.py): the image embedding is the visual
  tower's output for one image (``model(images, None, None)``: no feature mapping) and class
  embeddings come from the left-eye head ("Since we provide the input image as img_l, we choose
  text_left"). We reproduce exactly that, with ``logit_scale = exp(logit_scale_left)``, the scale
  trained with that head (the published script multiplies by a fixed 100 instead).
- **Checkpoints**: ``{"epoch", "step", "state_dict", ...}`` with DDP's ``module.`` prefix
  (RET_CLIP/clip/utils.py ``create_model``, ViLReF/eval/zeroshot_evaluation.py); RET-CLIP's zero-shot
  script also takes a bare state dict, so both are accepted.
- **Preprocessing** (``image_transform`` in RET_CLIP/clip/utils.py and ViLReF/clip/utils.py):
  ``Resize((224, 224), BICUBIC)`` (both sides: a stretch, no crop), CLIP mean/std. Our field-of-view
  crop stays **off**: both families feed the whole photograph, black surround included, so cropping to
  the disc would enlarge it beyond what they were trained on.
- **Tokenizer** (cn_clip/clip/utils.py ``tokenize``, bert_tokenizer.py): BERT WordPiece over the
  Chinese RoBERTa vocab, lower-cased, ``[CLS]`` + the first 50 pieces + ``[SEP]``, zero-padded to 52.
  Texts first go through ``_preprocess_text`` (lower-case, curly double quotes to ``"``;
  ViLReF/eval/data.py). The vocab is given as a local directory (``text_model_path``).
- **Ensembling** (``zero_shot_classifier``): template embeddings normalised, averaged, renormalised.

We build the towers with open_clip's ``VisionTransformer`` (OpenAI's key names, QuickGELU) and
transformers' ``BertModel`` (the key names of cn_clip's copy of it): maintained code, no family repo.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import Teacher, register_teacher
from .checkpoints import (
    CheckpointLayoutError,
    checkpoint_sha256,
    load_exact,
    read_state_dict,
    require_checkpoint,
    require_keys,
    strip_prefix,
)
from .clip import (
    HEAD_WIDTH,
    NormalisedImageEncoder,
    batched_text_embedder,
    build_openai_vit,
    clip_input_spec,
    openai_vit_config,
)

#: Tokens per prompt, [CLS] and [SEP] included (cn_clip tokenize's default; both families use it).
CONTEXT_LENGTH = 52


def _preprocess_text(text: str) -> str:
    # Chinese-CLIP's prompt clean-up (ViLReF/eval/data.py): its vocab has no curly quotes.
    return text.lower().replace("\u201c", '"').replace("\u201d", '"')


class ChineseClipModel(nn.Module):
    """Visual tower, BERT and the one text head zero-shot uses, under the published key names."""

    def __init__(self, visual: nn.Module, bert: nn.Module, head_name: str, head: nn.Module | nn.Parameter,
                 scale_name: str):
        super().__init__()
        self.visual = visual
        self.bert = bert
        self.head_name = head_name
        self.scale_name = scale_name
        setattr(self, head_name, head)
        setattr(self, scale_name, nn.Parameter(torch.zeros(())))

    def logit_multiplier(self) -> float:
        """exp of the stored log scale (named ``logit_scale`` or ``logit_scale_left``)."""
        return float(getattr(self, self.scale_name).detach().exp())

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        cls = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        head = getattr(self, self.head_name)
        return cls @ head if isinstance(head, nn.Parameter) else head(cls)


def _bert_from_shapes(state_dict: dict[str, torch.Tensor], source: str) -> nn.Module:
    from transformers import BertConfig, BertModel

    words = "bert.embeddings.word_embeddings.weight"
    require_keys(state_dict, (words, "bert.embeddings.position_embeddings.weight",
                              "bert.embeddings.token_type_embeddings.weight",
                              "bert.encoder.layer.0.intermediate.dense.weight"), source)
    vocab_size, hidden = state_dict[words].shape
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=len({k.split(".")[3] for k in state_dict if k.startswith("bert.encoder.layer.")}),
        num_attention_heads=hidden // HEAD_WIDTH,
        intermediate_size=state_dict["bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state_dict["bert.embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state_dict["bert.embeddings.token_type_embeddings.weight"].shape[0],
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )
    return BertModel(config, add_pooling_layer=False)


def _load_chinese_clip(
    family: str,
    checkpoint: str | Path | None,
    text_model_path: str | Path | None,
    head_name: str,
    scale_name: str,
    unused: tuple[str, ...],
) -> Teacher:
    path = require_checkpoint(family, checkpoint)
    if text_model_path is None:
        raise ValueError(
            f"{family}: pass text_model_path= , a local directory with the Chinese RoBERTa tokenizer's vocab.txt "
            "(e.g. a copy of hfl/chinese-roberta-wwm-ext)"
        )
    from transformers import BertTokenizer

    source = f"{family} checkpoint {path}"
    state_dict = strip_prefix(read_state_dict(path, ("state_dict",)), "module.")
    vision_cfg = openai_vit_config(state_dict, source)
    visual = build_openai_vit(vision_cfg, output_dim=state_dict["visual.proj"].shape[1])
    bert = _bert_from_shapes(state_dict, source)
    hidden, image_dim = bert.config.hidden_size, visual.output_dim
    # Heads are sized from the checkpoint; when it has none, from the published shapes, so that the
    # layout error below lists everything missing and unexpected at once.
    if head_name == "text_projection":  # ViLReF: a (hidden, embed) matrix
        text_dim = state_dict[head_name].shape[1] if head_name in state_dict else image_dim
        head = nn.Parameter(torch.empty(hidden, text_dim))
    else:  # RET-CLIP: Linear -> ReLU -> Linear
        first, last = state_dict.get(f"{head_name}.0.weight"), state_dict.get(f"{head_name}.2.weight")
        middle = first.shape[0] if first is not None else hidden
        text_dim = last.shape[0] if last is not None else image_dim
        head = nn.Sequential(nn.Linear(hidden, middle), nn.ReLU(), nn.Linear(middle, text_dim))
    if text_dim != image_dim:
        raise CheckpointLayoutError(
            f"{family}: image embeddings have {image_dim} dimensions, text embeddings {text_dim}"
        )
    model = ChineseClipModel(visual, bert, head_name, head, scale_name)
    load_exact(model, state_dict, source, unused=unused)
    model.eval()

    tokenizer = BertTokenizer.from_pretrained(text_model_path, local_files_only=True, do_lower_case=True)
    if len(tokenizer) != bert.config.vocab_size:
        raise CheckpointLayoutError(
            f"{family}: the tokenizer in {text_model_path} has {len(tokenizer)} tokens, the checkpoint's text "
            f"tower {bert.config.vocab_size}: not the vocab it was trained with"
        )

    def encode(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer([_preprocess_text(t) for t in texts], padding="max_length", truncation=True,
                           max_length=CONTEXT_LENGTH, return_tensors="pt")
        return model.encode_text(tokens["input_ids"], tokens["attention_mask"])

    return Teacher(
        family=family,
        name=path.stem,
        image_encoder=NormalisedImageEncoder(model.visual).eval(),
        embed_texts=batched_text_embedder(encode),
        input_spec=clip_input_spec(vision_cfg.image_size, resize_mode="stretch"),
        ensembling="mean_renormalised",
        logit_scale=model.logit_multiplier(),
        checkpoint_sha256=checkpoint_sha256(path),
    )


@register_teacher("retclip")
def load_retclip(checkpoint: str | Path | None = None, *, text_model_path: str | Path | None = None) -> Teacher:
    """A RET-CLIP checkpoint: the visual tower with the left-eye text head (its zero-shot setting)."""
    # Training-only parts, dropped: the pooler, the patient-level and right-eye heads and scales, and
    # the two-eye image mappings of both code snapshots.
    unused = (
        "bert.pooler.", "text_projection.", "text_projection_right.", "logit_scale", "logit_scale_right",
        "global_feature_mapping.", "left_feature_mapping.", "right_feature_mapping.", "single_feature_mapping.",
    )
    return _load_chinese_clip(
        "retclip", checkpoint, text_model_path, "text_projection_left", "logit_scale_left", unused
    )


@register_teacher("vilref")
def load_vilref(checkpoint: str | Path | None = None, *, text_model_path: str | Path | None = None) -> Teacher:
    """A ViLReF checkpoint (plain Chinese-CLIP layout)."""
    return _load_chinese_clip("vilref", checkpoint, text_model_path, "text_projection", "logit_scale",
                              ("bert.pooler.",))
