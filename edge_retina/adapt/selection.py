"""Choosing, per condition, between the zero-shot scorer and the few-shot heads by cross-validation.

Published few-shot adapters often fall below zero-shot with few, imbalanced shots, so a head is
kept only when it beats zero-shot on photos it was not fitted on: stratified k-fold
cross-validation on the shots, repeated with fresh folds, gives every candidate out-of-fold scores;
the best by AUROC is kept only when DeLong's test finds its out-of-fold AUROC above the zero-shot
AUROC of the same shots (one-sided 5 %). On 16 + 16 shots an AUROC moves by about 0.1 between
draws, so a fixed margin would let noise through; the test scales the bar with the shots. The
out-of-fold scores of the winner are also what its referral threshold is placed on (a head's scores
on its own training shots are optimistic and would put the threshold too high).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_retina.adapt.heads import HEADS, ZERO_SHOT, Head
from edge_retina.bench.metrics import auroc, delong_test

METHODS = ("auto", "threshold", "head")
FOLDS = 5
REPEATS = 3
#: Two-sided DeLong p-value below which "auto" keeps a head whose out-of-fold AUROC beats zero-shot's.
MAX_P_VALUE = 0.10


@dataclass
class HeadChoice:
    head: str  # ZERO_SHOT or a key of HEADS
    direction: np.ndarray  # u: s(x) = x . u + bias (see heads.py)
    bias: float
    out_of_fold_logits: np.ndarray  # (N,) the chosen scorer's scores on held-out shots
    cv_auroc: dict[str, float] = field(default_factory=dict)  # candidate -> pooled out-of-fold AUROC
    reason: str = ""


def stratified_folds(y: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold number per shot, positives and negatives each dealt round-robin after a shuffle."""
    assignment = np.empty(len(y), dtype=np.int64)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(y == label))
        assignment[members] = np.arange(len(members)) % folds
    return assignment


def out_of_fold_logits(head: Head, x: np.ndarray, y: np.ndarray, u0: np.ndarray, assignment: np.ndarray
                       ) -> np.ndarray:
    scores = np.empty(len(y))
    for fold in np.unique(assignment):
        held_out = assignment == fold
        u, b = head.fit(x[~held_out], y[~held_out], u0)
        scores[held_out] = x[held_out] @ u + b
    return scores


def choose_head(x: np.ndarray, y: np.ndarray, u0: np.ndarray, method: str, *, seed: int = 0) -> HeadChoice:
    """The scorer ``method`` asks for, fitted on all shots (x: normalised embeddings, y: 0/1, u0: text direction).

    "threshold" keeps zero-shot; "head" takes the best head by cross-validation; "auto" takes it only
    when it beats zero-shot significantly (MAX_P_VALUE). The heads need at least two positives and two negatives.
    """
    if method not in METHODS:
        raise ValueError(f"unknown adaptation method {method!r}; expected one of {METHODS}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    zero_shot = x @ u0
    both_classes = (y == 1).any() and (y == 0).any()
    cv = {ZERO_SHOT: auroc(y, zero_shot)} if both_classes else {}
    if method == "threshold":
        return HeadChoice(ZERO_SHOT, u0, 0.0, zero_shot, cv, "method 'threshold' keeps the zero-shot scores")
    folds = min(FOLDS, int((y == 1).sum()), int((y == 0).sum()))
    rng = np.random.default_rng(seed)
    assignments = [stratified_folds(y, folds, rng) for _ in range(REPEATS)]
    oof = {}
    for name, head in HEADS.items():
        runs = [out_of_fold_logits(head, x, y, u0, a) for a in assignments]
        cv[name] = float(np.mean([auroc(y, s) for s in runs]))
        oof[name] = np.mean(runs, axis=0)
    best = max(HEADS, key=lambda name: cv[name])
    test = delong_test(y, zero_shot, oof[best])
    versus = (f"{best}: cross-validated AUROC {cv[best]:.3f} vs zero-shot {cv[ZERO_SHOT]:.3f} "
              f"({folds}-fold x {REPEATS}, DeLong p {test.p_value:.2g})")
    if method == "auto" and not (test.delta > 0 and test.p_value < MAX_P_VALUE):
        return HeadChoice(ZERO_SHOT, u0, 0.0, zero_shot, cv, f"zero-shot kept: {versus}")
    u, b = HEADS[best].fit(x, y, u0)
    return HeadChoice(best, u, b, oof[best], cv, versus)
