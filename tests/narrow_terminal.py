"""Commands as an 80-column terminal shows them (``COLUMNS=80``, the width tables for people fit)."""
from __future__ import annotations

from click.testing import CliRunner

COLUMNS = 80


def narrow_runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": str(COLUMNS)})


def widest_line(text: str) -> int:
    """In bytes, not characters: byte-counting tools see no line wider than the terminal either."""
    return max((len(line.encode()) for line in text.splitlines()), default=0)
