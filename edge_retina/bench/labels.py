"""The labels CSV a parity run reads (format: docs/LABELS.md).

A ``file`` column (relative to the CSV's folder, or absolute) and one column per condition holding
1 (has it), 0 (does not) or blank (not labelled for that condition: left out of its AUROC).
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

import numpy as np

from edge_retina.errors import EdgeRetinaError


@dataclass
class LabelledImages:
    """Image paths and, per condition, a 0/1 label per image (NaN where the image is not labelled)."""

    paths: list[Path]
    labels: dict[str, np.ndarray]
    #: Columns of the CSV that were not read as conditions (metadata such as a width, or conditions
    #: the model does not have): ignored, as docs/LABELS.md says, and listed in the parity report.
    ignored_columns: tuple[str, ...] = ()

    def subset(self, indices: list[int]) -> "LabelledImages":
        return LabelledImages([self.paths[i] for i in indices], {c: y[indices] for c, y in self.labels.items()},
                              self.ignored_columns)


def read_labels_csv(path: str | os.PathLike[str], conditions: Collection[str] | None = None) -> LabelledImages:
    """The CSV at ``path``. With ``conditions`` (a bundle's), only those columns are read as labels and
    any other column is ignored (its values unchecked) and named in ``ignored_columns``; without,
    every column but ``file`` is a condition."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            rows = list(reader)
    except OSError as exc:
        raise EdgeRetinaError(f"labels CSV {path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:  # a spreadsheet's "Unicode text" (UTF-16) or a Latin-1 export
        raise EdgeRetinaError(f"labels CSV {path}: not UTF-8 text (byte {exc.start}); save it as "
                              "\"CSV UTF-8\"") from None
    except csv.Error as exc:
        raise EdgeRetinaError(f"labels CSV {path}: not a CSV file ({exc})") from None
    if "file" not in columns or len(columns) < 2:
        raise EdgeRetinaError(f"{path}: a labels CSV needs a 'file' column and one 0/1 column per condition "
                              f"(found columns {columns}); see docs/LABELS.md")
    if not rows:
        raise EdgeRetinaError(f"{path}: no rows")
    labelled = [c for c in columns if c != "file" and (conditions is None or c in conditions)]
    ignored = tuple(c for c in columns if c != "file" and c not in labelled)
    labels = {c: np.full(len(rows), np.nan) for c in labelled}
    for i, row in enumerate(rows):
        for c in labelled:
            value = (row[c] or "").strip()
            if value not in ("", "0", "1"):
                raise EdgeRetinaError(f"{path}: row {i + 2}, column {c!r}: expected 0, 1 or blank, got {value!r}")
            if value:
                labels[c][i] = float(value)
    paths = [Path(r["file"]) if Path(r["file"]).is_absolute() else path.parent / r["file"] for r in rows]
    return LabelledImages(paths, labels, ignored)


def listed_name(image: Path, labels_csv: Path) -> str:
    """``image`` as the labels CSV at ``labels_csv`` lists it (relative to the CSV's folder unless it
    is listed with an absolute path): messages name a row's photo the way its author wrote it, and
    stay short when the folder's own path is long."""
    try:
        return image.relative_to(labels_csv.parent).as_posix()
    except ValueError:
        return str(image)


def _portable_name(image: Path, folder: Path) -> str:
    """``image`` relative to ``folder`` when they share more than the filesystem root (so a CSV next
    to its images moves with them), else absolute."""
    try:
        shared = Path(os.path.commonpath([image, folder]))
    except ValueError:  # different drives on Windows
        return image.as_posix()
    return Path(os.path.relpath(image, folder)).as_posix() if shared != Path(shared.anchor) else image.as_posix()


def write_labels_csv(labelled: LabelledImages, path: str | os.PathLike[str]) -> Path:
    """Write ``labelled`` in the labels-CSV format, with file paths relative to the CSV when possible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conditions = list(labelled.labels)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *conditions])
        for i, image in enumerate(labelled.paths):
            name = _portable_name(Path(image).resolve(), path.parent.resolve())
            cells = ["" if math.isnan(labelled.labels[c][i]) else str(int(labelled.labels[c][i])) for c in conditions]
            writer.writerow([name, *cells])
    return path
