"""Commands as an 80-column terminal shows them (``COLUMNS=80``, the width tables for people fit)."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

COLUMNS = 80


def narrow_runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": str(COLUMNS)})


def widest_line(text: str) -> int:
    """In bytes, not characters: byte-counting tools see no line wider than the terminal either."""
    return max((len(line.encode()) for line in text.splitlines()), default=0)


def one_error(output: str) -> bool:
    """One "error:" message, wrapped to an 80-column terminal, and no traceback."""
    return output.startswith("error:") and output.count("error:") == 1 and "Traceback" not in output and \
        widest_line(output) <= COLUMNS


def unwrapped(text: str) -> str:
    """``text`` without whitespace, to look for a phrase in wrapped output: a line folds at a space or
    inside a long path, and where depends on how long the (temporary) path is, so a plain join of the
    lines would sometimes drop a space. Look for ``unwrapped(phrase)``."""
    return "".join(text.split())


def folder_wider_than_the_terminal(parent: Path) -> Path:
    """A new folder under ``parent`` whose path alone is wider than the terminal: a message naming a
    photo in it must wrap, and should name it once."""
    folder = parent.joinpath(*["a-site-folder-whose-path-alone-runs-past-the-terminal"] * 2)
    folder.mkdir(parents=True)
    return folder
