"""Turn the PATHS a user typed (files, folders, globs) into work items, losing none of them.

Every argument yields at least one item: an image to screen, or a problem (a path that does not exist,
a glob that matched nothing, a folder with no images) that becomes an error row in the results, so the
output always accounts for everything that was asked for.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from edge_retina.preprocess import IMAGE_EXTENSIONS

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class WorkItem:
    path: str
    problem: str | None = None  # why this argument yields nothing to screen
    problem_code: str | None = None


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def expand_inputs(arguments: list[str], *, recursive: bool = True) -> list[WorkItem]:
    items: list[WorkItem] = []
    seen: set[str] = set()

    def add(item: WorkItem) -> None:
        if item.problem is None:
            key = str(Path(item.path).resolve())
            if key in seen:  # the same file named twice is screened once
                return
            seen.add(key)
        items.append(item)

    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            images = _images_in(path, recursive)
            if not images:
                exts = ", ".join(sorted(IMAGE_EXTENSIONS))
                add(WorkItem(argument, f"folder contains no images ({exts})", "no_images"))
            for image in images:
                add(WorkItem(str(image)))
        elif path.exists():
            add(WorkItem(argument))  # an explicit file is always tried, whatever its suffix
        elif _GLOB_CHARS & set(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            files = [m for m in matches if Path(m).is_file()]
            if not files:
                add(WorkItem(argument, "pattern matched no files", "no_match"))
            for match in files:
                add(WorkItem(match))
        else:
            add(WorkItem(argument, f"{argument}: no such file or folder", "not_found"))
    return items
