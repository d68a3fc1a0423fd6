"""``adapt_bundle``: a bundle and a site's labelled photos in, an adapted bundle out.

The photos are embedded by the bundle's own engine through the Screener (same preprocessing and
quality gate as screening: an ungradable photo is never scored on the device, so it is not learnt
from either), then ``fit_site_adaptation`` chooses heads and thresholds, and the overlay is written
to a new bundle. Bad input (labels that do not match the bundle, a condition with one class only,
the same photo twice) is refused with one message before anything is written; photos that cannot
be read or graded are listed and left out.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_retina import __version__
from edge_retina.adapt.fit import DEFAULT_TARGET_SENSITIVITY, SiteAdaptation, fit_site_adaptation
from edge_retina.adapt.overlay import HEAD_FILE, bundle_scoring, check_output, head_bytes, write_overlay
from edge_retina.bench.labels import LabelledImages, listed_name, read_labels_csv
from edge_retina.bundle import AdaptationEntry, Bundle
from edge_retina.bundle.manifest import CREATED_FORMAT
from edge_retina.errors import EdgeRetinaError, named_once
from edge_retina.files import sha256_file
from edge_retina.screener import Screener
from edge_retina.wording import plural

ProgressCallback = Callable[[int], None]


@dataclass
class SitePhotos:
    """The usable labelled photos, embedded, and why the others were left out."""

    labelled: LabelledImages
    embeddings: np.ndarray  # (N, D)
    skipped: list[str] = field(default_factory=list)
    engine: dict[str, Any] = field(default_factory=dict)


@dataclass
class AdaptReport:
    out: Path
    adaptation: SiteAdaptation
    photos: int
    skipped: list[str]
    engine: dict[str, Any]


def check_site_labels(labelled: LabelledImages, bundle: Bundle, labels_csv: Path) -> None:
    """Refuse the labels of ``labels_csv`` when they cannot adapt this bundle, naming what is wrong."""
    prompts = bundle.manifest.prompts
    referable = [c.name for c in prompts.referable]
    unknown = [c for c in labelled.labels if c not in referable]
    if unknown:
        raise EdgeRetinaError(
            f"{labels_csv}: column(s) {unknown} are not conditions this bundle refers for ({', '.join(referable)}); "
            "rename or drop them (negatives are 0 in a condition's column, not a separate column)")
    for condition, y in labelled.labels.items():
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        if n_pos == 0 or n_neg == 0:
            raise EdgeRetinaError(
                f"{labels_csv}: condition {condition!r} has {plural(n_pos, 'positive')} and "
                f"{plural(n_neg, 'negative')}; adapting needs photos of both classes (label negatives with 0, "
                "or drop the column)")
    seen: dict[str, int] = {}
    duplicates = []
    for row, path in enumerate(labelled.paths, start=2):
        try:
            digest = sha256_file(path)
        except OSError:
            continue  # unreadable: reported when it is embedded
        if digest in seen:
            duplicates.append(f"rows {seen[digest]} and {row} ({listed_name(path, labels_csv)})")
        seen.setdefault(digest, row)
    if duplicates:
        raise EdgeRetinaError(
            f"{labels_csv}: the same photo is listed more than once ({'; '.join(duplicates)}); keep one row per photo "
            "(a duplicate would count twice and leak between cross-validation folds)")


def embed_site_photos(screener: Screener, labelled: LabelledImages, labels_csv: Path,
                      progress: ProgressCallback | None = None) -> SitePhotos:
    """Each photo is named as ``labels_csv`` lists it in the reasons it was left out."""
    kept, embeddings, skipped = [], [], []
    for i, path in enumerate(labelled.paths):
        result = screener.screen(path)
        name = listed_name(path, labels_csv)
        if result.error is not None:
            skipped.append(named_once(path, result.error, shown=name))
        elif not result.gradable:
            skipped.append(f"{name}: ungradable ({result.ungradable_reason})")
        else:
            kept.append(i)
            embeddings.append(result.embedding)
        if progress:
            progress(1)
    if not kept:
        raise EdgeRetinaError(f"none of the {len(labelled.paths)} labelled photos could be screened: "
                              + "; ".join(skipped[:3]))
    info = screener.engine_info
    engine = {k: info.get(k) for k in ("backend", "precision", "device", "library_version")}
    return SitePhotos(labelled.subset(kept), np.stack(embeddings), skipped, engine)


def adapt_bundle(
    bundle_path: str | Path,
    labels_csv: str | Path,
    out: str | Path,
    *,
    method: str = "auto",
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
    backend: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> AdaptReport:
    """Adapt the bundle at ``bundle_path`` to the photos of ``labels_csv`` (docs/LABELS.md); write the
    adapted bundle to ``out`` (a new directory, or an .erb.tar archive). See edge_retina.adapt."""
    labels_csv, out = Path(labels_csv), Path(out)
    check_output(Path(bundle_path), out)
    labelled = read_labels_csv(labels_csv)
    with Screener.from_bundle(bundle_path, backend=backend, precision=precision, threads=threads,
                              keep_embeddings=True) as screener:
        bundle = screener.bundle
        check_site_labels(labelled, bundle, labels_csv)
        photos = embed_site_photos(screener, labelled, labels_csv, progress)
    table, thresholds = bundle_scoring(bundle, adapted=False)  # always from the zero-shot baseline
    adaptation = fit_site_adaptation(table, photos.embeddings, photos.labelled.labels, thresholds, method=method,
                                     target_sensitivity=target_sensitivity, seed=seed)
    entry = AdaptationEntry(
        file=HEAD_FILE,
        method=method,
        target_sensitivity=target_sensitivity,
        conditions=adaptation.conditions,
        provenance={
            "labels_file": labels_csv.name,
            "labels_sha256": sha256_file(labels_csv),
            "photos_used": len(photos.labelled.paths),
            "photos_skipped": len(photos.skipped),
            "engine": photos.engine,
            "created": datetime.now(timezone.utc).strftime(CREATED_FORMAT),
            "tool_version": __version__,
            "command": shlex.join(sys.argv),
            "seed": seed,
            "baseline": "the bundle's zero-shot prompt table and condition thresholds (prompts section)",
        },
    )
    written = write_overlay(bundle, out, entry, head_bytes(adaptation.class_embeddings,
                                                                  adaptation.class_bias))
    return AdaptReport(written, adaptation, len(photos.labelled.paths), photos.skipped, photos.engine)
