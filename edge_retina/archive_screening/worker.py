"""The Ray Data actor: one verified bundle and one Screener, screening batches of paths.

It is a plain callable class, so Ray's ``map_batches`` runs it in an actor pool, and it runs as it is
without Ray too (tests, a debugger). Screening is ``Screener.screen`` itself: the archive has no
preprocessing or scoring of its own.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from edge_retina.archive_screening.results import bundle_sha256, results_schema
from edge_retina.archive_screening.sources import read_photo
from edge_retina.cli.results_io import flat_row
from edge_retina.errors import ImageError
from edge_retina.screener import Result, Screener

#: ``status`` of the row a worker returns for a photograph it left out (same path, content and
#: bundle as an existing row): counted by the driver for progress, never written.
SKIPPED = "skipped"


class ScreeningWorker:
    def __init__(self, bundle: str | Path, *, backend: str | None = None, precision: str | None = None,
                 threads: int | None = None):
        self.screener = Screener.from_bundle(bundle, backend=backend, precision=precision, threads=threads)
        info = self.screener.engine_info
        manifest = self.screener.bundle.manifest
        self.provenance = {
            "bundle": manifest.model.name,
            "bundle_sha256": bundle_sha256(self.screener.bundle),
            "engine": f"{info.get('backend')}/{info.get('precision')}",
        }
        self.schema = results_schema(self.screener.conditions)

    def __call__(self, batch: pa.Table) -> pa.Table:
        columns = {name: batch.column(name).to_pylist() for name in batch.column_names}
        rows = [self._screen_one(*row) for row in zip(
            columns["source"], columns["problem"], columns["problem_code"], columns["done"], columns["done_sha256"])]
        return pa.Table.from_pylist(rows, schema=self.schema)

    def _screen_one(self, source: str, problem: str | None, problem_code: str | None, done: bool,
                    done_sha256: str | None) -> dict:
        sha256 = None
        if problem is not None:
            result = Result(source, error=problem, error_code=problem_code)
        else:
            try:
                data = read_photo(source)
            except ImageError as exc:
                result = Result(source, error=str(exc), error_code=exc.code)
            else:
                sha256 = hashlib.sha256(data).hexdigest()
                result = None if done and sha256 == done_sha256 else self.screener.screen(data, name=source)
        if result is None or (done and sha256 is None and done_sha256 is None):
            return {"source": source, "status": SKIPPED}
        return {**flat_row(result, self.screener.conditions), "sha256": sha256, **self.provenance,
                "screened_at": datetime.now(timezone.utc)}

    def close(self) -> None:
        self.screener.close()
