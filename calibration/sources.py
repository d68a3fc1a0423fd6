"""Where calibration candidates come from: image files, folders, or a CSV with metadata columns.

A CSV needs a ``file`` column (relative to the CSV's folder, or absolute); its other columns are
metadata that stratified selection can group by.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from edge_retina.preprocess import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Candidate:
    path: Path
    metadata: Mapping[str, str] = field(default_factory=dict)
    csv: Path | None = None  # the calibration CSV that lists it (None: found in a folder, or named alone)


def _read_csv(path: Path) -> list[Candidate]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "file" not in rows[0]:
        raise ValueError(f"{path}: a calibration CSV needs a 'file' column (other columns are metadata)")
    candidates = []
    for row in rows:
        file = Path(row["file"])
        metadata = {k: (v or "") for k, v in row.items() if k != "file"}
        candidates.append(Candidate(file if file.is_absolute() else path.parent / file, metadata, path))
    return candidates


def list_candidates(sources: Iterable[str | Path]) -> list[Candidate]:
    """Every image named by ``sources`` (files, folders searched recursively, CSVs), in a stable order."""
    candidates: list[Candidate] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            candidates += [Candidate(p) for p in sorted(source.rglob("*"))
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        elif source.suffix.lower() == ".csv":
            candidates += _read_csv(source)
        elif source.exists():
            candidates.append(Candidate(source))
        else:
            raise FileNotFoundError(f"calibration source not found: {source}")
    seen: set[Path] = set()
    unique = []
    for c in candidates:  # the same image named twice is one candidate
        key = c.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


def check_stratify_columns(candidates: Sequence[Candidate], columns: Sequence[str]) -> None:
    """ValueError naming the ``columns`` that some candidate lacks, and the columns each source has:
    stratified selection groups every candidate by every one of them. Read from the CSVs' headers,
    so it is known before an image is opened."""
    if not columns or not candidates:
        return
    shared = [c for c in candidates[0].metadata if all(c in k.metadata for k in candidates)]
    missing = ", ".join(repr(c) for c in columns if c not in shared)
    if not missing:
        return
    columns_of = {k.csv: list(k.metadata) for k in candidates}  # per source (a CSV's rows share its header)
    if not any(columns_of.values()):
        raise ValueError(f"cannot stratify by {missing}: the calibration candidates have no columns to group by (a "
                         "calibration CSV's columns besides 'file'; images from folders have none)")
    if len(columns_of) == 1:
        raise ValueError(f"cannot stratify by {missing}: not a column of the calibration CSV (its columns besides "
                         f"'file': {', '.join(shared)})")
    sources = "; ".join(f"{'images from folders or named alone' if csv is None else csv}: {', '.join(names) or 'none'}"
                        for csv, names in columns_of.items())
    raise ValueError(f"cannot stratify by {missing}: not a column of every calibration source (their columns "
                     f"besides 'file': {sources})")
