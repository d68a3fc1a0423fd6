"""Ready labelled sets for parity: the shared datasets' held-out splits as condition labels.

The labels-CSV format itself (docs/LABELS.md) is read and written by the runtime
(``edge_retina.bench.labels``), so a device can run parity on its own CSV.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from converters.reference.data import SHARED_DATASETS, SPLITS, load_records
from converters.reference.evaluate import TASKS
from edge_retina.bench.labels import LabelledImages


def shared_dataset_labels(root: Path, dataset: str, split: str = "test", limit: int | None = None) -> LabelledImages:
    """One of the shared datasets' splits (the reference model's held-out splits), as condition labels.

    Each condition's positives and negatives come from the same collection (e.g. referable DR vs no
    DR within EyePACS), so an AUROC never rewards telling two cameras apart. ``limit`` keeps the
    first ``limit`` labelled images in a stable order that interleaves the classes.
    """
    if dataset not in SHARED_DATASETS:
        raise ValueError(f"unknown shared dataset {dataset!r}; expected one of {SHARED_DATASETS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    records = [r for r in load_records(root) if r.dataset == dataset and r.split == split]
    tasks = [t for t in TASKS if t.dataset == dataset]
    kept = [r for r in records if any(t.applies_to(r) for t in tasks)]
    # A stable order that mixes classes and collections (split keys are "patient:..." or "sha1:...",
    # so sorting them directly would put one collection first and a limit would cut the others off).
    kept.sort(key=lambda r: hashlib.sha256(r.group.encode()).hexdigest())
    if limit is not None:
        kept = kept[:limit]
    labels: dict[str, np.ndarray] = {}
    for task in tasks:
        column = labels.setdefault(task.condition, np.full(len(kept), np.nan))
        for i, r in enumerate(kept):
            if task.is_positive(r):
                column[i] = 1.0
            elif task.is_negative(r):
                column[i] = 0.0
    return LabelledImages([r.path(root) for r in kept], labels)


def merge_labelled(sets: list[LabelledImages]) -> LabelledImages:
    """One labelled set from several: the union of their conditions, NaN where a set has no label."""
    conditions = sorted({c for s in sets for c in s.labels})
    paths = [p for s in sets for p in s.paths]
    labels = {c: np.concatenate([s.labels.get(c, np.full(len(s.paths), np.nan)) for s in sets]) for c in conditions}
    return LabelledImages(paths, labels)


def training_images(root: Path, *, every: int = 1) -> list[Path]:
    """The reference model's training-split images (never its validation or test images), every
    ``every``-th in a stable order: candidates for calibration sets."""
    records = [r for r in load_records(root) if r.split == "train"]
    return [r.path(root) for r in records[::every]]

