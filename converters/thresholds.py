"""Referral thresholds chosen on a labelled validation set for a target sensitivity.

For each condition, the threshold is the highest score that still refers at least the target
share of its positives (the Screener refers when score >= threshold); the sensitivity and
specificity it gives on the validation set go into the manifest's ``threshold_source`` beside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edge_retina.bench.metrics import sensitivity_specificity
from edge_retina.prompt_table import PromptTable
from edge_retina.wording import plural

DEFAULT_TARGET_SENSITIVITY = 0.90


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    sensitivity: float
    specificity: float
    target_sensitivity: float
    n_pos: int
    n_neg: int

    def source(self) -> str:
        return (f"validation set: sensitivity {self.sensitivity:.3f}, specificity {self.specificity:.3f} "
                f"for target sensitivity {self.target_sensitivity:.2f} "
                f"({plural(self.n_pos, 'positive')}, {plural(self.n_neg, 'negative')})")


def threshold_for_sensitivity(y: np.ndarray, scores: np.ndarray, target: float) -> float:
    """The highest threshold at which "score >= threshold" refers at least ``target`` of the positives."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    positives = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(y) == 1])[::-1]
    if len(positives) == 0:
        raise ValueError("choosing a threshold needs at least one positive")
    # Referring the k highest-scoring positives needs threshold <= the k-th highest positive score.
    needed = math.ceil(target * len(positives) - 1e-9)
    return float(positives[needed - 1])


def choose_thresholds(table: PromptTable, embeddings: np.ndarray, labels: dict[str, np.ndarray],
                      target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY) -> dict[str, ThresholdChoice]:
    """Per labelled condition of ``table`` with both classes present: the threshold and what it gave."""
    scores = table.score(embeddings).condition_probabilities
    choices = {}
    for condition, y_all in labels.items():
        labelled = ~np.isnan(y_all)
        y = y_all[labelled]
        if condition not in scores or len(np.unique(y)) < 2:
            continue
        s = scores[condition][labelled]
        threshold = threshold_for_sensitivity(y, s, target_sensitivity)
        sensitivity, specificity = sensitivity_specificity(y, s, threshold)
        choices[condition] = ThresholdChoice(threshold, sensitivity, specificity, target_sensitivity,
                                             int((y == 1).sum()), int((y == 0).sum()))
    return choices
