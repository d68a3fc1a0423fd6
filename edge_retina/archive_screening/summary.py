"""``archive summary``: referral rates per condition, ungradable rate and errors by code, per bundle.

Rates are over the newest row of each photograph (see results.py): referral over gradable photos,
ungradable over the photos that could be read, errors over all.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from edge_retina.archive_screening.results import newest_per_source, read_results
from edge_retina.errors import EdgeRetinaError


def summarise_results(out: Path) -> list[dict[str, Any]]:
    """One summary per bundle that has rows in ``out``, the most recently used bundle first."""
    if not out.exists():
        raise EdgeRetinaError(f"{out}: no such file or folder")
    table = read_results(out)
    if table is None:
        raise EdgeRetinaError(f"{out}: no results (expected the folder 'archive screen --out' writes)")
    summaries = []
    for bundle_hash in table.column("bundle_sha256").unique().to_pylist():
        rows = newest_per_source(table.filter(pc.equal(table.column("bundle_sha256"), bundle_hash)))
        summaries.append(_summary(rows))
    return sorted(summaries, key=lambda s: s["last_screened_at"], reverse=True)


def _summary(rows) -> dict[str, Any]:
    status = Counter(rows.column("status").to_pylist())
    photos = rows.num_rows
    readable = photos - status["error"]
    gradable = status["refer"] + status["no-referral"]
    conditions = [n[len("p_"):] for n in rows.column_names
                  if n.startswith("p_") and rows.column(n).null_count < rows.num_rows]
    referral = {}
    for condition in conditions:
        referred = pc.sum(pc.fill_null(rows.column(f"refer_{condition}"), False)).as_py() or 0
        referral[condition] = {"referred": referred, "rate": _rate(referred, gradable)}
    errors = Counter(code for code, s in zip(rows.column("error_code").to_pylist(), rows.column("status").to_pylist())
                     if s == "error")
    return {
        "bundle": rows.column("bundle")[0].as_py(),
        "bundle_sha256": rows.column("bundle_sha256")[0].as_py(),
        "last_screened_at": pc.max(rows.column("screened_at")).as_py().isoformat(),
        "photos": photos,
        "gradable": gradable,
        "refer": status["refer"],
        "refer_rate": _rate(status["refer"], gradable),
        "ungradable": status["ungradable"],
        "ungradable_rate": _rate(status["ungradable"], readable),
        "errors": status["error"],
        "error_rate": _rate(status["error"], photos),
        "errors_by_code": dict(errors.most_common()),
        "referral": referral,
    }


def _rate(count: int, of: int) -> float | None:
    return round(count / of, 4) if of else None
