"""Prompt-embedding lookup: zero-shot scores from an image embedding, with no text encoder on the device.

The host embeds each condition's prompts with the teacher's text tower and stores them (L2-normalised)
in the bundle's prompt table. On the device a condition's class embedding is the ensemble of its
prompt embeddings, and an image's scores are cosine similarities scaled by the model's logit scale:

- ``class_probabilities``: softmax over the bundle's whole class set (normal included);
- ``condition_probabilities``: for each condition, "condition vs normal", i.e. the softmax over the
  pair [condition, normal] = sigmoid(logit_condition - logit_normal). Referral thresholds apply to it.

A site adaptation (``edge_retina.adapt``) may replace class embeddings and add a per-class bias to
the logits (``with_head``); the scoring rule stays the same.
"""
from __future__ import annotations

import copy
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BundleError

ENSEMBLING_RULES = ("mean", "mean_renormalised")


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def ensemble(prompt_embeddings: np.ndarray, rule: str) -> np.ndarray:
    """One class embedding from a condition's normalised prompt embeddings.

    ``mean`` (FLAIR: the mean of the normalised description embeddings, kept as is) or
    ``mean_renormalised`` (CLIP-style template ensembling: the mean, L2-normalised again).
    """
    if rule not in ENSEMBLING_RULES:
        raise ValueError(f"unknown ensembling rule {rule!r}; expected one of {ENSEMBLING_RULES}")
    mean = prompt_embeddings.mean(axis=0)
    return l2_normalise(mean) if rule == "mean_renormalised" else mean


@dataclass(frozen=True)
class ZeroShotScores:
    """Scores for a batch of N images over C classes (the normal class included)."""

    classes: tuple[str, ...]
    normal_class: str
    logits: np.ndarray  # (N, C)
    class_probabilities: np.ndarray  # (N, C), softmax over all classes
    condition_probabilities: dict[str, np.ndarray]  # condition -> (N,), condition vs normal


class PromptTable:
    """Conditions x prompts -> embeddings, and the rule that turns them into zero-shot scores."""

    def __init__(
        self,
        classes: list[str],
        normal_class: str,
        prompt_embeddings: np.ndarray,
        prompt_class_index: np.ndarray,
        ensembling: str,
        logit_scale: float,
    ):
        if normal_class not in classes:
            raise BundleError(f"prompt table: normal class {normal_class!r} is not one of the classes {classes}")
        if len(set(classes)) != len(classes):
            raise BundleError(f"prompt table: duplicate class names in {classes}")
        prompt_embeddings = np.asarray(prompt_embeddings, dtype=np.float32)
        prompt_class_index = np.asarray(prompt_class_index, dtype=np.int64)
        if not np.isfinite(prompt_embeddings).all():
            raise BundleError("prompt table: the prompt embeddings hold NaN or infinite values")
        if prompt_embeddings.ndim != 2 or prompt_class_index.shape != (prompt_embeddings.shape[0],):
            raise BundleError(
                "prompt table: expected embeddings (prompts, dim) and one class index per prompt, got "
                f"{prompt_embeddings.shape} and {prompt_class_index.shape}"
            )
        missing = [c for i, c in enumerate(classes) if not np.any(prompt_class_index == i)]
        if missing or prompt_class_index.min(initial=0) < 0 or prompt_class_index.max(initial=0) >= len(classes):
            raise BundleError(f"prompt table: classes without prompts or bad class indices (without prompts: {missing})")
        if not np.isfinite(logit_scale) or logit_scale <= 0:
            raise BundleError(f"prompt table: logit scale must be positive, got {logit_scale}")
        self.classes = tuple(classes)
        self.normal_class = normal_class
        self.conditions = tuple(c for c in classes if c != normal_class)
        self.prompt_embeddings = l2_normalise(prompt_embeddings)
        self.prompt_class_index = prompt_class_index
        self.ensembling = ensembling
        self.logit_scale = float(logit_scale)
        self.class_embeddings = np.stack(
            [ensemble(self.prompt_embeddings[prompt_class_index == i], ensembling) for i in range(len(classes))]
        ).astype(np.float32)
        self.class_bias = np.zeros(len(classes), dtype=np.float32)  # zero-shot: no bias

    def with_head(self, class_embeddings: np.ndarray, class_bias: np.ndarray) -> "PromptTable":
        """A copy that scores with these class embeddings (C, D) and logit biases (C,) instead."""
        class_embeddings = np.asarray(class_embeddings, dtype=np.float32)
        class_bias = np.asarray(class_bias, dtype=np.float32)
        if class_embeddings.shape != self.class_embeddings.shape or class_bias.shape != self.class_bias.shape:
            raise BundleError(
                f"adapted head has shapes {class_embeddings.shape} and {class_bias.shape}, but the prompt table "
                f"has {self.class_embeddings.shape} class embeddings: the head was made for another model"
            )
        if not (np.isfinite(class_embeddings).all() and np.isfinite(class_bias).all()):
            raise BundleError("adapted head holds non-finite values")
        adapted = copy.copy(self)
        adapted.class_embeddings, adapted.class_bias = class_embeddings, class_bias
        return adapted

    @property
    def embedding_dim(self) -> int:
        return int(self.prompt_embeddings.shape[1])

    # -- storage ------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the arrays (``.npz``); names, rule and scale live in the bundle manifest."""
        with open(path, "wb") as f:
            np.savez(f, prompt_embeddings=self.prompt_embeddings, prompt_class_index=self.prompt_class_index)

    @classmethod
    def load(
        cls, path: Path, *, classes: list[str], normal_class: str, ensembling: str, logit_scale: float
    ) -> "PromptTable":
        try:
            with np.load(path, allow_pickle=False) as data:
                embeddings = data["prompt_embeddings"]
                index = data["prompt_class_index"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise BundleError(f"prompt table {path}: unreadable ({type(exc).__name__}: {exc})") from exc
        try:
            return cls(classes, normal_class, embeddings, index, ensembling, logit_scale)
        except (TypeError, ValueError) as exc:  # arrays of the wrong kind (strings, complex...)
            raise BundleError(f"prompt table {path}: unusable arrays ({exc})") from exc

    # -- scoring ------------------------------------------------------------------------------------
    def score(self, image_embeddings: np.ndarray) -> ZeroShotScores:
        """Zero-shot scores for (N, D) or (D,) image embeddings (normalised here, whatever they come as)."""
        emb = np.atleast_2d(np.asarray(image_embeddings, dtype=np.float32))
        if emb.shape[1] != self.embedding_dim:
            raise BundleError(
                f"engine output has dimension {emb.shape[1]} but the prompt table has {self.embedding_dim}: "
                "engine and prompt table come from different models"
            )
        logits = self.logit_scale * (l2_normalise(emb) @ self.class_embeddings.T) + self.class_bias
        shifted = logits - logits.max(axis=1, keepdims=True)
        class_probabilities = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        normal = logits[:, self.classes.index(self.normal_class)]
        condition_probabilities = {
            c: 1.0 / (1.0 + np.exp(-(logits[:, self.classes.index(c)] - normal))) for c in self.conditions
        }
        return ZeroShotScores(self.classes, self.normal_class, logits, class_probabilities, condition_probabilities)
