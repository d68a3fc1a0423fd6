"""Fitting a site adaptation on embedded labelled photos: per condition, a head and a threshold."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from edge_retina.adapt.heads import ZERO_SHOT
from edge_retina.adapt.selection import choose_head
from edge_retina.adapt.thresholds import MIN_POSITIVES, site_threshold
from edge_retina.bundle.manifest import AdaptedCondition
from edge_retina.prompt_table import PromptTable, l2_normalise
from edge_retina.wording import plural

DEFAULT_TARGET_SENSITIVITY = 0.9


@dataclass
class SiteAdaptation:
    """What adapting produced: the adapted scorer, the thresholds in force and why, per condition."""

    method: str
    target_sensitivity: float
    class_embeddings: np.ndarray  # (C, D): the prompt table's, with adapted conditions' rows replaced
    class_bias: np.ndarray  # (C,)
    conditions: dict[str, AdaptedCondition]

    def table(self, base: PromptTable) -> PromptTable:
        return base.with_head(self.class_embeddings, self.class_bias)

    def thresholds(self, bundle_thresholds: Mapping[str, float | None]) -> dict[str, float | None]:
        return {c: self.conditions[c].threshold if c in self.conditions else t for c, t in bundle_thresholds.items()}


def fit_site_adaptation(
    table: PromptTable,
    embeddings: np.ndarray,
    labels: Mapping[str, np.ndarray],
    bundle_thresholds: Mapping[str, float | None],
    *,
    method: str = "auto",
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
    seed: int = 0,
) -> SiteAdaptation:
    """Adapt ``table`` to the site whose photos have these embeddings (N, D) and 0/1/NaN labels.

    Each labelled condition gets a head (``method``; only with at least MIN_POSITIVES positives and
    negatives) and, with at least MIN_POSITIVES positives, a threshold for ``target_sensitivity``
    placed on its cross-validated scores; otherwise the bundle's threshold and zero-shot are kept.
    The normal class and unlabelled conditions keep their zero-shot embeddings.
    """
    x = l2_normalise(np.asarray(embeddings, dtype=np.float64))
    class_embeddings = table.class_embeddings.astype(np.float64).copy()
    class_bias = table.class_bias.astype(np.float64).copy()
    normal = table.classes.index(table.normal_class)
    conditions = {}
    for condition, column in labels.items():
        labelled = ~np.isnan(column)
        y = column[labelled].astype(np.int64)
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        row = table.classes.index(condition)
        u0 = table.logit_scale * (class_embeddings[row] - class_embeddings[normal])
        report: dict[str, Any] = {"n_pos": n_pos, "n_neg": n_neg}
        if n_pos < MIN_POSITIVES:
            report["note"] = (f"{plural(n_pos, 'positive')}, fewer than the {MIN_POSITIVES} a site threshold "
                              "needs: the bundle's threshold and zero-shot scores are kept")
            conditions[condition] = AdaptedCondition(ZERO_SHOT, bundle_thresholds[condition], "bundle", report)
            continue
        if n_neg < MIN_POSITIVES:
            choice = choose_head(x[labelled], y, u0, "threshold", seed=seed)
            choice.reason = (f"{plural(n_neg, 'negative')}, fewer than the {MIN_POSITIVES} a head needs: zero-shot "
                             "scores are kept")
        else:
            choice = choose_head(x[labelled], y, u0, method, seed=seed)
        probabilities = 1.0 / (1.0 + np.exp(-choice.out_of_fold_logits))
        threshold = site_threshold(y, probabilities, target_sensitivity, seed=seed)
        report.update(threshold.to_dict(), bundle_threshold=bundle_thresholds[condition],
                      cv_auroc={k: round(v, 6) for k, v in choice.cv_auroc.items()}, note=choice.reason)
        if choice.head != ZERO_SHOT:
            class_embeddings[row] = class_embeddings[normal] + choice.direction / table.logit_scale
            class_bias[row] = class_bias[normal] + choice.bias
        conditions[condition] = AdaptedCondition(choice.head, threshold.threshold, "site", report)
    return SiteAdaptation(method, target_sensitivity, class_embeddings.astype(np.float32),
                          class_bias.astype(np.float32), conditions)
