"""The results of an archive run: a Parquet dataset (a folder of part files) that only ever grows.

Each part is written whole and renamed into place (files.write_atomically), so a run killed at any
moment leaves complete parts only; rows not yet in a part are screened again by the next run. A row
is identified by its photograph's path, the sha256 of its bytes and the bundle's hash: a re-run with
the same bundle skips a photograph whose path and content already have a row, and screens a replaced
file (new content under the same path) again. When a path has several rows for a bundle, the newest
(``screened_at``) is the one that counts.
"""
from __future__ import annotations

import hashlib
import io
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from edge_retina.bundle import Bundle
from edge_retina.cli.results_io import csv_columns
from edge_retina.files import write_atomically

#: Columns an archive row has beyond ``screen``'s.
PROVENANCE = ("sha256", "bundle", "bundle_sha256", "engine", "screened_at")
_FLOAT_SUFFIXES = ("_ms",)
_BOOLEANS = ("gradable", "refer")


def bundle_sha256(bundle: Bundle) -> str:
    """A bundle's identity: the hash of its manifest, which pins every file's sha256 (the same identity
    the engine cache and the bridge's bundle id use)."""
    return hashlib.sha256(bundle.manifest.canonical_bytes()).hexdigest()


def results_schema(conditions: tuple[str, ...]) -> pa.Schema:
    """``screen``'s result columns, typed, plus the provenance of each row."""
    fields = []
    for name in csv_columns(conditions):
        if name.startswith("p_") or name.endswith(_FLOAT_SUFFIXES):
            kind = pa.float64()
        elif name in _BOOLEANS or name.startswith("refer_"):
            kind = pa.bool_()
        else:
            kind = pa.string()
        fields.append(pa.field(name, kind))
    fields += [pa.field(n, pa.string()) for n in PROVENANCE[:-1]]
    fields.append(pa.field("screened_at", pa.timestamp("ms", tz="UTC")))
    return pa.schema(fields)


def part_files(out: Path) -> list[Path]:
    """The complete part files (temporary files of an interrupted write start with a dot)."""
    return sorted(out.glob("part-*.parquet")) if out.is_dir() else []


def write_part(out: Path, table: pa.Table) -> Path:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    path = out / f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
    write_atomically(path, buffer.getvalue())
    return path


def read_results(out: Path, columns: list[str] | None = None) -> pa.Table | None:
    """Every row of the dataset at ``out`` (None when it has none). Parts written by bundles with
    different conditions have different columns: missing ones read as null."""
    files = part_files(out)
    if not files:
        return None
    schema = pa.unify_schemas([pq.read_schema(f) for f in files])
    return pads.dataset([str(f) for f in files], schema=schema, format="parquet").to_table(columns=columns)


def newest_per_source(table: pa.Table) -> pa.Table:
    """One row per ``source``: the one screened last."""
    indexed = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    ordered = indexed.sort_by([("screened_at", "ascending"), ("_row", "ascending")])
    newest = ordered.group_by("source", use_threads=False).aggregate([("_row", "last")])
    return table.take(newest.column("_row_last"))


def already_screened(out: Path, bundle_hash: str) -> pa.Table:
    """(source, done_sha256, done) of the photographs that have a row for this bundle; done_sha256 is
    null when that row is a read error (the file could not be hashed)."""
    empty = pa.table({"source": pa.array([], pa.string()), "done_sha256": pa.array([], pa.string()),
                      "done": pa.array([], pa.bool_())})
    table = read_results(out, columns=["source", "sha256", "bundle_sha256", "screened_at"])
    if table is None:
        return empty
    table = table.filter(pc.equal(table.column("bundle_sha256"), bundle_hash))
    if table.num_rows == 0:
        return empty
    newest = newest_per_source(table)
    return pa.table({"source": newest.column("source"), "done_sha256": newest.column("sha256"),
                     "done": pa.array([True] * newest.num_rows, pa.bool_())})
