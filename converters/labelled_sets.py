"""Labelled image sets for parity: the labels-CSV format, and ready mappings for ../shared/datasets.

Labels CSV: a ``file`` column (relative to the CSV's folder, or absolute) and one column per condition
holding 1 (has it), 0 (does not) or blank (not labelled for that condition: left out of its AUROC).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from converters.parity import LabelledImages
from converters.reference.data import load_records
from converters.reference.evaluate import TASKS

SHARED_DATASETS = ("heimed", "rimone", "eye4class")


def read_labels_csv(path: Path) -> LabelledImages:
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "file" not in rows[0]:
        raise ValueError(f"{path}: a labels CSV needs a 'file' column and one 0/1 column per condition")
    conditions = [c for c in rows[0] if c != "file"]
    labels = {c: np.full(len(rows), np.nan) for c in conditions}
    for i, row in enumerate(rows):
        for c in conditions:
            value = (row[c] or "").strip()
            if value not in ("", "0", "1"):
                raise ValueError(f"{path}: row {i + 2}, column {c!r}: expected 0, 1 or blank, got {value!r}")
            if value:
                labels[c][i] = float(value)
    paths = [Path(r["file"]) if Path(r["file"]).is_absolute() else path.parent / r["file"] for r in rows]
    return LabelledImages(paths, labels)


def shared_dataset_labels(root: Path, dataset: str, split: str = "test", limit: int | None = None) -> LabelledImages:
    """One of the shared datasets' splits (the reference model's held-out splits), as condition labels.

    Each condition's positives and negatives come from the same collection (e.g. referable DR vs no
    DR within EyePACS), so an AUROC never rewards telling two cameras apart. ``limit`` keeps the
    first ``limit`` labelled images in a stable order that interleaves the classes.
    """
    if dataset not in SHARED_DATASETS:
        raise ValueError(f"unknown shared dataset {dataset!r}; expected one of {SHARED_DATASETS}")
    records = [r for r in load_records(root) if r.dataset == dataset and r.split == split]
    tasks = [t for t in TASKS if any(t.is_positive(r) or t.is_negative(r) for r in records)]
    kept = [r for r in records if any(t.is_positive(r) or t.is_negative(r) for t in tasks)]
    kept.sort(key=lambda r: r.group)  # the split key is a hash: a stable, class-mixed order
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
