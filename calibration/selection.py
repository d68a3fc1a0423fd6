"""Choosing a diverse calibration subset: k-centre greedy on feature vectors, or stratified by metadata.

k-centre greedy (Sener & Savarese 2018, "core-set" selection) repeatedly adds the candidate farthest
from everything chosen so far, so rare-looking images are covered instead of the subset mirroring the
commonest camera. It is a dozen lines of numpy; scikit-learn has no k-centre selector (its KMeans
returns centroids, not members), hence the hand-written loop.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Sequence

import numpy as np


def kcenter_greedy(features: np.ndarray, k: int, seed: int) -> list[int]:
    """Indices of ``k`` rows of ``features`` (N, D) chosen by k-centre greedy from a seeded start."""
    features = np.asarray(features, dtype=np.float64)
    n = len(features)
    if k >= n:
        return list(range(n))
    first = int(np.random.default_rng(seed).integers(n))
    chosen = [first]
    distance = np.linalg.norm(features - features[first], axis=1)
    for _ in range(k - 1):
        nxt = int(np.argmax(distance))  # ties: the lowest index, so the result is deterministic
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(features - features[nxt], axis=1))
    return chosen


def stratified_sample(groups: Sequence[Hashable], k: int, seed: int) -> list[int]:
    """``k`` indices spread over ``groups`` in proportion to their sizes (each group gets at least one
    while k allows), drawn at random within each group with ``seed``; sorted."""
    n = len(groups)
    if k >= n:
        return list(range(n))
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    keys = sorted(members, key=str)
    quota = {g: len(members[g]) * k / n for g in keys}
    alloc = {g: min(len(members[g]), max(1, int(quota[g]))) for g in keys}
    # Trim or top up to exactly k by largest remainder (ties by group order).
    while sum(alloc.values()) > k:
        g = max((g for g in keys if alloc[g] > 1), key=lambda g: alloc[g] - quota[g])
        alloc[g] -= 1
    while sum(alloc.values()) < k:
        g = max((g for g in keys if alloc[g] < len(members[g])), key=lambda g: quota[g] - alloc[g])
        alloc[g] += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for g in keys:
        chosen += rng.choice(members[g], size=alloc[g], replace=False).tolist()
    return sorted(chosen)


def thumbnail_features(image: np.ndarray, side: int = 16) -> np.ndarray:
    """A model-free descriptor of a prepared RGB uint8 image: its ``side``-pixel thumbnail in [0, 1].

    Used for k-centre selection when no model is given: it spreads the subset over brightness,
    colour cast and field-of-view shape, which is what drives activation ranges.
    """
    import cv2

    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32).ravel() / 255.0
