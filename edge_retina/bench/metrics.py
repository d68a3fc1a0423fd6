"""Classification statistics for parity runs, in numpy alone.

Why not scikit-learn: ``bench parity --reference fp32`` runs on the device, whose runtime install
has numpy but neither scikit-learn nor scipy (hundreds of MB on an ARM box). AUROC is the
Mann-Whitney statistic, a few lines on midranks, and DeLong's test needs those midranks anyway; the
tests check both against scikit-learn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

#: Fewer positives or negatives than this and an AUROC rests on too few photos to be taken at face
#: value: one photo more or less moves it by up to 1 / that count (by 0.5 with 2 positives). Every
#: table that prints an AUROC measured on labels marks such a value (``format_auroc``) and explains
#: the mark in a footnote (``few_labels_footnote``).
MIN_LABELS_PER_CLASS = 10
#: Not "*", which the screening table already uses for "over the referral threshold".
FEW_LABELS_MARK = "?"
FEW_LABELS_FOOTNOTE = (f"{FEW_LABELS_MARK} fewer than {MIN_LABELS_PER_CLASS} positives or negatives: "
                       "AUROC unreliable")


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given the mean of the ranks they span."""
    _, inverse, counts = np.unique(np.asarray(x), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def _split(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    scores = np.asarray(scores, dtype=np.float64)
    if y.shape != scores.shape[-1:]:
        raise ValueError(f"labels have shape {y.shape}, scores {scores.shape}")
    positives, negatives = scores[..., y == 1], scores[..., y == 0]
    if positives.shape[-1] == 0 or negatives.shape[-1] == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    return positives, negatives


def auroc(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half): the Mann-Whitney U over n_pos * n_neg."""
    positives, negatives = _split(y, scores)
    m, n = len(positives), len(negatives)
    ranks = midranks(np.concatenate([positives, negatives]))
    return float((ranks[:m].sum() - m * (m + 1) / 2.0) / (m * n))


def few_labels(n_pos: int, n_neg: int) -> bool:
    """Whether an AUROC on ``n_pos`` positives and ``n_neg`` negatives rests on too few of either."""
    return min(n_pos, n_neg) < MIN_LABELS_PER_CLASS


def few_labels_footnote(counts: Iterable[tuple[int, int]]) -> str | None:
    """The footnote of a table whose AUROCs rest on these (positives, negatives) counts: what its
    marks mean (``FEW_LABELS_FOOTNOTE``) if any row is marked (``few_labels``), else None."""
    return FEW_LABELS_FOOTNOTE if any(few_labels(n_pos, n_neg) for n_pos, n_neg in counts) else None


def format_auroc(value: float, n_pos: int, n_neg: int, digits: int = 4) -> str:
    """An AUROC as tables print it, marked when it rests on too few labels (``few_labels``)."""
    return f"{value:.{digits}f}" + (FEW_LABELS_MARK if few_labels(n_pos, n_neg) else "")


def roc_points(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) at every distinct threshold, from (0, 0) to (1, 1)."""
    y = np.asarray(y)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    sorted_scores, sorted_y = np.asarray(scores)[order], y[order]
    last_of_tie = np.r_[np.diff(sorted_scores) != 0, True]
    tp = np.cumsum(sorted_y == 1)[last_of_tie]
    fp = np.cumsum(sorted_y == 0)[last_of_tie]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


@dataclass(frozen=True)
class DeLongResult:
    auroc_reference: float
    auroc_test: float
    delta: float  # test - reference
    standard_error: float
    z: float
    p_value: float  # two-sided


def _structural_components(positives: np.ndarray, negatives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's V10 (one per positive) and V01 (one per negative) for each row of scores.

    Midrank form of Sun & Xu (2014): V10_i = (rank of positive i among all - its rank among the
    positives) / n, V01_j = 1 - (rank of negative j among all - its rank among the negatives) / m.
    """
    m, n = positives.shape[1], negatives.shape[1]
    v10, v01 = [], []
    for pos, neg in zip(positives, negatives):
        combined = midranks(np.concatenate([pos, neg]))
        v10.append((combined[:m] - midranks(pos)) / n)
        v01.append(1.0 - (combined[m:] - midranks(neg)) / m)
    return np.array(v10), np.array(v01)


def delong_test(y: np.ndarray, reference_scores: np.ndarray, test_scores: np.ndarray) -> DeLongResult:
    """DeLong's test of two correlated AUROCs measured on the same images.

    DeLong E.R., DeLong D.M., Clarke-Pearson D.L. (1988), "Comparing the areas under two or more
    correlated receiver operating characteristic curves: a nonparametric approach", Biometrics
    44(3):837-845; computed with the midranks of Sun X., Xu W. (2014), "Fast implementation of
    DeLong's algorithm for comparing the areas under correlated receiver operating characteristic
    curves", IEEE Signal Processing Letters 21(11):1389-1393.
    """
    positives, negatives = _split(y, np.stack([reference_scores, test_scores]))
    m, n = positives.shape[1], negatives.shape[1]
    v10, v01 = _structural_components(positives, negatives)
    aurocs = v10.mean(axis=1)
    s10 = np.cov(v10) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(v01) if n > 1 else np.zeros((2, 2))
    contrast = np.array([-1.0, 1.0])
    variance = float(contrast @ s10 @ contrast / m + contrast @ s01 @ contrast / n)
    delta = float(aurocs[1] - aurocs[0])
    if variance <= 0.0:  # identical rankings: no evidence of any difference
        return DeLongResult(float(aurocs[0]), float(aurocs[1]), delta, 0.0, 0.0, 1.0)
    se = math.sqrt(variance)
    z = delta / se
    return DeLongResult(float(aurocs[0]), float(aurocs[1]), delta, se, z, math.erfc(abs(z) / math.sqrt(2.0)))


@dataclass(frozen=True)
class BootstrapDelta:
    delta: float  # test - reference on the full set
    ci_low: float
    ci_high: float
    replicates: int
    confidence: float


def _bootstrap_aurocs(positives: np.ndarray, negatives: np.ndarray, pos_counts: np.ndarray,
                      neg_counts: np.ndarray) -> np.ndarray:
    """AUROC of each bootstrap replicate, given how often each image was drawn (replicates x images).

    A replicate's AUROC is sum_i c_i * (#drawn negatives below positive i + half the ties) / (m n):
    with the negatives sorted once, the counts below each positive are a cumulative sum read at a
    searchsorted position, so B replicates cost O(B (m + n)) instead of sorting B resamples.
    """
    order = np.argsort(negatives, kind="stable")
    sorted_neg = negatives[order]
    cumulative = np.concatenate([np.zeros((len(neg_counts), 1)), np.cumsum(neg_counts[:, order], axis=1)], axis=1)
    below = cumulative[:, np.searchsorted(sorted_neg, positives, side="left")]
    at_or_below = cumulative[:, np.searchsorted(sorted_neg, positives, side="right")]
    wins = below + 0.5 * (at_or_below - below)
    return (pos_counts * wins).sum(axis=1) / (len(positives) * len(negatives))


def paired_bootstrap_delta(y: np.ndarray, reference_scores: np.ndarray, test_scores: np.ndarray, *,
                           replicates: int = 2000, confidence: float = 0.95, seed: int = 0) -> BootstrapDelta:
    """Percentile CI of AUROC(test) - AUROC(reference), resampling images with both models paired.

    Positives and negatives are resampled separately (a stratified bootstrap), so every replicate
    has both classes and the class balance of the set.
    """
    ref_pos, ref_neg = _split(y, reference_scores)
    test_pos, test_neg = _split(y, test_scores)
    m, n = len(ref_pos), len(ref_neg)
    rng = np.random.default_rng(seed)
    pos_counts = rng.multinomial(m, np.full(m, 1.0 / m), size=replicates).astype(np.float64)
    neg_counts = rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float64)
    deltas = (_bootstrap_aurocs(test_pos, test_neg, pos_counts, neg_counts)
              - _bootstrap_aurocs(ref_pos, ref_neg, pos_counts, neg_counts))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(deltas, [tail, 1.0 - tail])
    delta = auroc(y, test_scores) - auroc(y, reference_scores)
    return BootstrapDelta(float(delta), float(low), float(high), replicates, confidence)


def sensitivity_specificity(y: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity of "refer when score >= threshold" (the Screener's rule)."""
    y = np.asarray(y)
    refer = np.asarray(scores) >= threshold
    positives, negatives = y == 1, y == 0
    sensitivity = float(refer[positives].mean()) if positives.any() else math.nan
    specificity = float((~refer[negatives]).mean()) if negatives.any() else math.nan
    return sensitivity, specificity


def decision_agreement(reference_scores: np.ndarray, test_scores: np.ndarray, threshold: float) -> float:
    """Fraction of images on which both models make the same refer / no-refer decision."""
    return float(np.mean((np.asarray(reference_scores) >= threshold) == (np.asarray(test_scores) >= threshold)))


def retention(auroc: float, reference_auroc: float) -> float | None:
    """How much of the reference's skill above chance a model keeps: (AUROC - 0.5) / (AUROC_ref - 0.5).

    None when the reference is at or below chance (the ratio means nothing there).
    """
    return None if reference_auroc <= 0.5 else (auroc - 0.5) / (reference_auroc - 0.5)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) embedding arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def distribution(values: np.ndarray) -> dict[str, float]:
    """Min, low percentiles, median, mean and max: a cosine's worst cases matter more than its mean."""
    values = np.asarray(values, dtype=np.float64)
    p1, p5, p50 = np.percentile(values, [1, 5, 50])
    return {"min": float(values.min()), "p1": float(p1), "p5": float(p5), "median": float(p50),
            "mean": float(values.mean()), "max": float(values.max())}
