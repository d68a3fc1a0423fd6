"""Referral thresholds recalibrated on a site's labelled photos, for a target sensitivity.

The threshold is an order statistic of the positives' scores: the highest threshold at which at
least ``target`` of the site's positives are referred (the Screener refers at score >= threshold).
Its uncertainty is a percentile bootstrap over the positives. Below ``MIN_POSITIVES`` positives the
estimate rests on one or two photos (for a 90 % target it would be the lowest positive's score), so
the bundle's own threshold is kept and the report says why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Fewest positives a site threshold (and a few-shot head, which needs one) is estimated from.
#: With 10 positives one photo moves sensitivity by 10 points; fewer cannot place a 90 % threshold.
MIN_POSITIVES = 10
BOOTSTRAP_REPLICATES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class SiteThreshold:
    threshold: float
    ci95: tuple[float, float]
    n_pos: int
    n_neg: int
    sensitivity: float  # on the scores it was estimated from
    specificity: float | None  # likewise (None without negatives)

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "threshold_ci95": list(self.ci95), "n_pos": self.n_pos,
                "n_neg": self.n_neg, "sensitivity_on_shots": self.sensitivity,
                "specificity_on_shots": self.specificity}


def _order_statistic_index(n_pos: int, target: float) -> int:
    """0-based index, in ascending order, of the positive score used as the threshold: at most
    floor(n (1 - target)) positives may fall below it."""
    return int(math.floor(n_pos * (1.0 - target) + 1e-9))


def threshold_for_sensitivity(positive_scores: np.ndarray, target: float) -> float:
    scores = np.sort(np.asarray(positive_scores, dtype=np.float64))
    return float(scores[_order_statistic_index(len(scores), target)])


def site_threshold(y: np.ndarray, scores: np.ndarray, target: float, *, seed: int = 0,
                   replicates: int = BOOTSTRAP_REPLICATES) -> SiteThreshold:
    """The threshold for ``target`` sensitivity on (labels, scores), with its bootstrap 95 % CI."""
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = scores[y == 1], scores[y == 0]
    if len(positives) < MIN_POSITIVES:
        raise ValueError(f"a site threshold needs at least {MIN_POSITIVES} positives, got {len(positives)}")
    threshold = threshold_for_sensitivity(positives, target)
    rng = np.random.default_rng(seed)
    resampled = np.sort(rng.choice(positives, size=(replicates, len(positives)), replace=True), axis=1)
    replicate_thresholds = resampled[:, _order_statistic_index(len(positives), target)]
    tail = (1.0 - CONFIDENCE) / 2.0
    low, high = np.quantile(replicate_thresholds, [tail, 1.0 - tail])
    sensitivity = float(np.mean(positives >= threshold))
    specificity = float(np.mean(negatives < threshold)) if len(negatives) else None
    return SiteThreshold(threshold, (float(low), float(high)), len(positives), len(negatives), sensitivity,
                         specificity)
