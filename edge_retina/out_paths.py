"""Checking an ``--out`` before the work that fills it: screening a folder or running a benchmark
takes minutes, and must not end in a traceback because its results have nowhere to go."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence


def unwritable_reason(path: Path, *, folder: bool = False, overwrite: bool = True) -> str | None:
    """Why ``path`` cannot receive a results file (``folder``: a results folder), or None if it can.
    With ``overwrite=False`` an existing file is a reason too, so that an earlier run's results are not
    replaced unasked; the reason names ``--overwrite``, the flag of the commands that pass its value.

    Missing parent folders are fine (the writers create them) when the nearest one that exists takes
    new files. That is tried by creating a temporary file there, because permission bits say nothing
    about root, a read-only mount or /proc.
    """
    path = Path(path)
    try:
        if path.is_dir() and not folder:
            return "it is a folder (name a file in it instead)"
        if path.exists() and not path.is_dir():
            if folder:
                return "it is a file; these results are a folder (name a new one or an earlier run's)"
            if not overwrite:
                return "it exists; move it away or pass --overwrite to replace it"
            existing = path.parent
        else:
            existing = path if folder else path.parent
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            return f"{existing} is not a folder"
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        return f"cannot create files in {existing}: {exc.strerror or exc}"
    return None


def misnamed_reason(path: Path, kind: str, suffixes: Sequence[str]) -> str | None:
    """Why ``path`` is the wrong name for a file of ``kind`` ("JSON", "HTML"; its suffix is not one of
    ``suffixes``, in lower case), or None: a report written under another format's name (JSON in
    r.csv, HTML in r.json) is opened by the wrong program."""
    if Path(path).suffix.lower() in suffixes:
        return None
    return f"the report is {kind}; name a {' or '.join(suffixes)} file"
