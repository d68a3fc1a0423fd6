"""Result files: CSV (one row per image), JSON (an array) or JSON Lines.

Rows are written and flushed as each image finishes, into ``<out>.partial``; the file gets its final
name when the batch ends. An interrupted batch therefore leaves every finished row on disk (in the
``.partial`` file, a whole CSV/JSON file of the rows done) and never a half-written file under the
final name. ``screen`` refuses to replace either file unless told to (``--overwrite``), so neither
an earlier run's results nor an interrupted run's rows are lost to a re-run.

A file name that is not valid UTF-8 (a byte such as 0xE9 in a Latin-1 name) reaches Python as a
lone surrogate; CSV writes it as its escape (``\udce9``), as JSON does, so the file stays UTF-8.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
from pathlib import Path
from typing import IO, Any

from edge_retina.preprocess.dicom import IDENTIFIERS
from edge_retina.screener import STAGES, Result

FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl"}


def csv_columns(conditions: tuple[str, ...]) -> list[str]:
    return (
        ["source", "status", "gradable", "ungradable_reason", "refer"]
        + [f"p_{c}" for c in conditions]
        + [f"refer_{c}" for c in conditions]
        + [f"{s}_ms" for s in STAGES]
        + ["error_code", "error", "eye", *IDENTIFIERS]
    )


def flat_row(result: Result, conditions: tuple[str, ...]) -> dict[str, Any]:
    """One result as the ``csv_columns`` row, with typed values (None where there is none)."""
    d = result.to_dict()
    row: dict[str, Any] = {k: d[k] for k in ("source", "status", "gradable", "ungradable_reason", "refer")}
    for c in conditions:
        row[f"p_{c}"] = d["probabilities"].get(c)
        row[f"refer_{c}"] = d["referral"].get(c)
    for s in STAGES:
        row[f"{s}_ms"] = d["timings_ms"].get(s)
    row.update(error_code=d["error_code"], error=d["error"], eye=d["eye"])
    row.update({k: d["identifiers"].get(k) for k in IDENTIFIERS})
    return row


def csv_row(result: Result, conditions: tuple[str, ...]) -> dict[str, Any]:
    row = flat_row(result, conditions)
    for c in conditions:
        if row[f"p_{c}"] is not None:
            row[f"p_{c}"] = f"{row[f'p_{c}']:.6f}"
    for s in STAGES:
        if row[f"{s}_ms"] is not None:
            row[f"{s}_ms"] = f"{row[f'{s}_ms']:.3f}"
    return {k: ("" if v is None else v) for k, v in row.items()}


def result_format(path: Path) -> str:
    """The format ``path``'s suffix names; ValueError naming the accepted suffixes otherwise."""
    format = FORMATS.get(Path(path).suffix.lower())
    if format is None:
        raise ValueError(f"must end in one of {', '.join(sorted(FORMATS))}, got {Path(path).name!r}")
    return format


def partial_path(path: Path) -> Path:
    """Where the rows go until the batch ends (and stay if it is interrupted)."""
    return path.with_name(path.name + ".partial")


class ResultWriter:
    """Streams results to ``path`` (format from its suffix) and renames it into place on ``close``."""

    def __init__(self, path: Path, conditions: tuple[str, ...]):
        self.path = Path(path)
        self.format = result_format(self.path)
        self.conditions = conditions
        self.partial = partial_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(self.partial, "w", newline="", encoding="utf-8", errors="backslashreplace")
        self._count = 0
        if self.format == "csv":
            self._csv = csv.DictWriter(self._file, fieldnames=csv_columns(conditions))
            self._csv.writeheader()
        elif self.format == "json":
            self._file.write("[\n")

    def write(self, result: Result) -> None:
        if self.format == "csv":
            self._csv.writerow(csv_row(result, self.conditions))
        else:
            text = json.dumps(result.to_dict())
            if self.format == "json":
                text = ("  " if self._count == 0 else ",\n  ") + text
            else:
                text += "\n"
            self._file.write(text)
        self._count += 1
        self._file.flush()

    def abandon(self) -> Path:
        """Close the file after a row could not be written (a full disk), not renaming it: the rows
        written before stay in the ``.partial`` file (the last one may be cut short). Where they are."""
        with contextlib.suppress(OSError):  # flushing what is buffered fails again; the file is closed anyway
            self._file.close()
        return self.partial

    def close(self, *, interrupted: bool = False) -> Path:
        """End the file (a JSON array is closed) and rename it into place, unless the batch was
        ``interrupted``: its rows then stay in the ``.partial`` file. Where the rows are."""
        if self.format == "json":
            self._file.write("\n]\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if interrupted:
            return self.partial
        os.replace(self.partial, self.path)
        return self.path
