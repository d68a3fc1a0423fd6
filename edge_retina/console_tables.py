"""Tables for people on a terminal: the screening results, a run's summary, and titled tables of
text cells. JSON and the HTML report carry the full detail; these are sized to be read.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edge_retina.screener import STAGES, Result


def rich_table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=escape(title))
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


def summarise(results: list[Result]) -> dict:
    statuses = ["no-referral", "refer", "ungradable", "error"]
    counts = {s: sum(r.status == s for r in results) for s in statuses}
    latency = {}
    for stage in STAGES:
        values = [r.timings_ms[stage] for r in results if stage in r.timings_ms and r.gradable]
        if values:
            latency[stage] = {"median_ms": round(statistics.median(values), 3), "n": len(values)}
    return {"images": len(results), **counts, "latency": latency}


def _shown(text: str) -> str:
    """``text`` printable on any terminal: a file name that is not UTF-8 (its bytes arrive as lone
    surrogates) is shown with escapes, as the CSV and JSON results write it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def print_results(console: Console, results: list[Result], conditions: tuple[str, ...], summary: dict) -> None:
    table = Table(title="Screening results", show_lines=False)
    table.add_column("image", overflow="fold")
    table.add_column("status")
    for c in conditions:
        table.add_column(c, justify="right")
    table.add_column("ms", justify="right")
    styles = {"refer": "bold red", "no-referral": "green", "ungradable": "yellow", "error": "magenta"}
    for r in results:
        cells = []
        for c in conditions:
            p = r.probabilities.get(c)
            cells.append("" if p is None else (f"[bold]{p:.2f}*[/]" if r.referral.get(c) else f"{p:.2f}"))
        detail = r.status
        if r.status == "ungradable":
            detail += f" ({r.ungradable_reason})"
        elif r.status == "error":
            detail += f" ({r.error_code})"
        total = r.timings_ms.get("total")
        table.add_row(_shown(Path(r.source).name if r.screened else r.source), f"[{styles[r.status]}]{detail}[/]",
                      *cells, "" if total is None else f"{total:.1f}")
    console.print(table)
    console.print("* = over the bundle's referral threshold")
    for r in results:
        if r.error:
            console.print(f"[magenta]error[/] {_shown(r.source)}: {_shown(r.error)}", soft_wrap=True)
    lat = ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in summary["latency"].items())
    console.print(
        f"{summary['images']} images: {summary['no-referral']} no referral, {summary['refer']} refer, "
        f"{summary['ungradable']} ungradable, {summary['error']} errors. Median latency: {lat or 'n/a'}"
    )
