"""Tables for people on a terminal: the screening results, a run's summary, titled tables of text
cells, and lines of text wrapped to it. JSON and the HTML report carry the full detail; these are
sized to be read: a table keeps the leading columns that fit the terminal (80 columns is the floor
we design for) and names the ones left out, instead of wrapping every cell a character or two per
line.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from edge_retina.errors import named_once
from edge_retina.screener import STAGES, Result
from edge_retina.wording import plural

if TYPE_CHECKING:
    from edge_retina.bench.parity import ParityTable


# The head rule in ASCII: a terminal's byte-counting tools (and 80-column checks) see one byte a column.
ASCII_SIMPLE_HEAD = box.Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)
#: The narrowest a wrapping column of free text gets (``rich_table(wrap_last=True)``).
WRAP_MIN = 20


def fit_columns(make: Callable[[int, str | None], Table], headers: list[str], width: int | None = None,
                details: str = "--json", note: str | None = None, lines: list[list[str]] = (),
                footnote: str | None = None) -> Table:
    """The table ``make(n, caption)`` builds from the first ``n`` columns, for the largest ``n`` (at
    least 1) that fits ``width`` (default: the terminal's); the caption is ``footnote`` (what a mark
    in the cells means) on a line of its own, then the columns left out and where they are
    (``details``), then ``note``. ``lines`` (header and rows as text) may hold characters of more
    than one UTF-8 byte (ΔAUROC): the fit leaves room for them, so byte-counting tools see no line
    wider than ``width`` either."""
    width = (width or Console().width) - max((len("".join(c).encode()) - len("".join(c)) for c in lines), default=0)
    wide = Console(width=10_000)
    for shown in range(len(headers), 0, -1):
        left_out = headers[shown:]
        parts = [f"more in {details}: {', '.join(left_out)}" if left_out else "", note or ""]
        caption_lines = [footnote or "", "; ".join(p for p in parts if p)]
        table = make(shown, "\n".join(line for line in caption_lines if line) or None)
        if Measurement.get(wide, wide.options, table).maximum <= width:
            break
    return table


def _room_left(narrowest: Table, width: int) -> int:
    """How wide a wrapping column may be in ``width``: ``narrowest`` is the table with that column one
    character wide, so the column gets the rest (at least ``WRAP_MIN``)."""
    wide = Console(width=10_000)
    return max(WRAP_MIN, 1 + width - Measurement.get(wide, wide.options, narrowest).maximum)


def _table(title: str, caption: str | None) -> Table:
    return Table(title=escape(title), caption=escape(caption) if caption else None, box=ASCII_SIMPLE_HEAD,
                 caption_justify="left", pad_edge=False)


def rich_table(title: str, headers: list[str], rows: list[list[str]], *, width: int | None = None,
               details: str = "--json", note: str | None = None, wrap_last: bool = False,
               footnote: str | None = None) -> Table:
    """A table of text cells, first column left-aligned, cut to the columns that fit (``fit_columns``,
    which also places ``note`` and ``footnote`` under it).

    ``wrap_last``: the last column is free text (a title, a note) that wraps in the room the others
    leave, when that is at least ``WRAP_MIN`` columns; with less it is left out like any other."""
    width = width or Console().width

    def make(shown: int, caption: str | None, last_width: int | None = None) -> Table:
        table = _table(title, caption)
        for i, h in enumerate(headers[:shown]):
            wraps = wrap_last and i == len(headers) - 1
            table.add_column(h, justify="left" if i == 0 or wraps else "right", no_wrap=not wraps,
                             max_width=last_width if wraps else None)
        for row in rows:
            table.add_row(*(escape(cell) for cell in row[:shown]))
        return table

    last_width = _room_left(make(len(headers), None, 1), width) if wrap_last else None
    return fit_columns(lambda shown, caption: make(shown, caption, last_width), headers, width, details, note,
                       [headers, *rows], footnote)


#: How much further than its first line a wrapped line's continuation lines are indented.
HANGING_INDENT = 2


def print_wrapped(console: Console, message: str | Text) -> None:
    """A line for people (a progress line, an error naming a long path) wrapped to the terminal counting
    bytes, not characters (a "ΔAUROC" check name is one column but two bytes), so no printed line is
    wider than the terminal by any count; a word longer than a line (a path) is folded, never cut.
    Continuation lines hang ``HANGING_INDENT`` columns in from the first line's own indent, so a
    wrapped progress line under a step reads as one item. A str is printed as it is (no markup);
    style parts of a line with a Text."""
    text = message.copy() if isinstance(message, Text) else Text(message)
    text.expand_tabs(console.tab_size)  # so that the wrapped first line is a prefix of the line
    for line in text.split("\n"):
        plain = line.plain
        # A character takes at most 3 bytes per column (e.g. "…"), so a third of the terminal always fits.
        width = max(console.width // 3, console.width - (len(plain.encode()) - len(plain)), 1)
        indent = min(len(plain) - len(plain.lstrip(" ")) + HANGING_INDENT, max(0, width - WRAP_MIN))
        first = line.wrap(console, width)[0]
        rest = line[len(first.plain):]
        rest = rest[len(rest.plain) - len(rest.plain.lstrip()):]
        lines = [first]
        if rest.plain:
            lines += [Text(" " * indent) + part for part in rest.wrap(console, max(width - indent, 1))]
        for part in lines:
            part.rstrip()
            console.print(part, highlight=False, markup=False, overflow="fold", width=width)


def identical_rows(rows: list[list[str]], keep: int = 1) -> tuple[list[list[str]], list[str]]:
    """``rows`` without those whose cells after the name equal an earlier row's, and one note per
    group ("a, b: same as c"): engines that compute exactly what their FP32 model does say so once.
    The first ``keep`` rows (the reference) are never folded into."""
    kept: list[list[str]] = []
    alike: dict[int, list[str]] = {}
    for row in rows:
        match = next((i for i, k in enumerate(kept) if i >= keep and k[1:] == row[1:]), None)
        if match is None:
            kept.append(row)
        else:
            alike.setdefault(match, []).append(row[0])
    return kept, [f"{', '.join(names)}: same numbers as {kept[i][0]}" for i, names in alike.items()]


def parity_console_tables(tables: list[ParityTable], *, width: int | None = None,
                          details: str = "--json") -> list[Table]:
    """``edge_retina.bench.parity.parity_tables`` for a terminal: rows whose numbers are identical to an
    earlier row's (an engine computing exactly what its FP32 model does) folded into a note."""
    fitted = []
    for title, headers, rows, footnote in tables:
        kept, notes = identical_rows(rows)
        fitted.append(rich_table(title, headers, kept, width=width, details=details, note="; ".join(notes) or None,
                                 footnote=footnote))
    return fitted


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


def image_labels(sources: list[str]) -> list[str]:
    """Each photo's file name, with as many parent folders as it takes to tell apart photos whose
    names are alike (``full/0003.jpg`` and ``test/0003.jpg``): a screener must see which photo a row is."""
    parts = [Path(s).parts for s in sources]
    depth = [1] * len(sources)
    while True:
        labels = [str(Path(*p[-d:])) for p, d in zip(parts, depth)]
        clashes = {label for label in labels if labels.count(label) > 1}
        grown = False
        for i, label in enumerate(labels):
            if label in clashes and depth[i] < len(parts[i]):
                depth[i] += 1
                grown = True
        if not grown:
            return labels


def print_results(console: Console, results: list[Result], conditions: tuple[str, ...], summary: dict) -> None:
    styles = {"refer": "bold red", "no-referral": "green", "ungradable": "yellow", "error": "magenta"}
    headers = ["image", "status", *conditions, "time ms"]
    labels = image_labels([r.source for r in results])
    rows = []
    for r, label in zip(results, labels):
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
        # An error's row too: the line under the table names its full path, which in the table
        # would widen the first column until no other fits.
        rows.append([escape(_shown(label)),
                     f"[{styles[r.status]}]{detail}[/]", *cells, "" if total is None else f"{total:.1f}"])

    def make(shown: int, caption: str | None, image_width: int | None = None) -> Table:
        table = _table("Screening results", caption)
        for i, h in enumerate(headers[:shown]):
            table.add_column(h, justify="right" if i >= 2 else "left", no_wrap=i > 0, overflow="fold",
                             max_width=image_width if i == 0 else None)
        for row in rows:
            table.add_row(*row[:shown])
        return table

    # A long file name folds rather than push the status out of the table (leaving names alone): the
    # image column gets at most what the status column leaves.
    image_width = _room_left(make(2, None, 1), console.width)
    console.print(fit_columns(lambda shown, caption: make(shown, caption, image_width), headers, console.width,
                              details="--json and --out"))
    console.print("* = over the bundle's referral threshold")
    for r in results:
        if r.error:
            print_wrapped(console, Text.assemble(("error", "magenta"), f" {_shown(named_once(r.source, r.error))}"))
    lat = ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in summary["latency"].items())
    console.print(
        f"{plural(summary['images'], 'image')}: {summary['no-referral']} no referral, {summary['refer']} refer, "
        f"{summary['ungradable']} ungradable, {plural(summary['error'], 'error')}. Median latency: {lat or 'n/a'}"
    )
