"""Ready labelled sets for parity: the shared datasets' held-out splits as condition labels.

The labels-CSV format itself (docs/LABELS.md) is read and written by the runtime
(``edge_retina.bench.labels``), so a device can run parity on its own CSV.
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from converters.reference.data import SPLITS, load_records
from converters.reference.evaluate import TASKS
from edge_retina.bench.labels import LabelledImages

SHARED_DATASETS = ("heimed", "rimone", "eye4class", "odir", "palm")


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


# The ODIR-5K photos of the shared odir/ folder: never in the reference model's training data
# (load_records reads heimed, rimone and eye4class only), a new site for site-adaptation benchmarks.
# Keywords -> condition; negatives are eyes whose only keyword is "normal fundus".
UNSEEN_SITE = "odir"
_UNSEEN_SITE_POSITIVES = {
    "diabetic_retinopathy": ("moderate non proliferative retinopathy", "severe nonproliferative retinopathy",
                             "proliferative diabetic retinopathy", "severe proliferative diabetic retinopathy"),
    "amd": ("dry age-related macular degeneration", "wet age-related macular degeneration",
            "age-related macular degeneration"),
}
_UNSEEN_SITE_NORMAL = "normal fundus"


def unseen_site_labels(root: Path, split: str, *, test_fraction: float = 0.3) -> LabelledImages:
    """The odir/ folder as a site the reference model never saw: referable DR and AMD vs normal fundus.

    Patients who also have photos in eye4class (a training source) are left out, so no eye of a
    training patient is evaluated; the rest are split by patient into "train" (the site's labelled
    shots) and "test".
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    seen = {r.group.split(":", 1)[1] for r in load_records(root) if r.group.startswith("odir:")}
    folder = root / UNSEEN_SITE
    with open(folder / "labels.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["patient"] not in seen]
    paths, columns = [], {c: [] for c in _UNSEEN_SITE_POSITIVES}
    for row in rows:
        u = int(hashlib.sha256(f"{UNSEEN_SITE}:{row['patient']}".encode()).hexdigest()[:12], 16) / 16**12
        if ("test" if u < test_fraction else "train") != split:
            continue
        keywords = {k.strip() for k in row["keywords"].split(",")}
        normal = keywords == {_UNSEEN_SITE_NORMAL}
        labels = {c: 1.0 if keywords & set(p) else 0.0 if normal else np.nan
                  for c, p in _UNSEEN_SITE_POSITIVES.items()}
        if all(np.isnan(v) for v in labels.values()):
            continue
        paths.append(folder / row["file"])
        for c, v in labels.items():
            columns[c].append(v)
    return LabelledImages(paths, {c: np.array(v) for c, v in columns.items()})
