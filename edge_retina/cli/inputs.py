"""Turn the PATHS a user typed (files, folders, globs) into work items, losing none of them.

Every argument yields at least one item: an image to screen, or a problem (a path that does not exist,
a glob that matched nothing, a folder with no images, a folder that cannot be listed) that becomes an
error row in the results, so the output always accounts for everything that was asked for.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from edge_retina.preprocess import IMAGE_EXTENSIONS

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class WorkItem:
    path: str
    problem: str | None = None  # why this argument yields nothing to screen
    problem_code: str | None = None  # one of edge_retina.errors.RESULT_ERROR_CODES


def _unreadable(path: str, exc: OSError) -> WorkItem:
    return WorkItem(path, f"{path}: cannot list or access it ({exc.strerror})", "unreadable")


def _images_in(folder: Path, recursive: bool) -> list[WorkItem]:
    """The image files under ``folder``, in path order, and a problem item for each sub-folder that
    cannot be listed (so its images are not skipped silently). Symlinked folders are followed once:
    a link back up the tree cannot loop."""
    found: list[WorkItem] = []
    visited: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, onerror=lambda exc: found.append(_unreadable(exc.filename, exc)),
                                     followlinks=True):
        info = os.stat(root)
        if (info.st_dev, info.st_ino) in visited or not recursive:
            dirs.clear()
        if (info.st_dev, info.st_ino) in visited:
            continue
        visited.add((info.st_dev, info.st_ino))
        for name in files:  # everything but folders: a broken link or a FIFO gets its error row too
            path = Path(root) / name
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                found.append(WorkItem(str(path)))
    return sorted(found, key=lambda item: item.path)


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
        try:
            is_dir, exists = path.is_dir(), path.exists()
        except OSError as exc:  # a folder on the path without search permission
            add(_unreadable(argument, exc))
            continue
        if is_dir:
            found = _images_in(path, recursive)
            if not found:
                exts = ", ".join(sorted(IMAGE_EXTENSIONS))
                found.insert(0, WorkItem(argument, f"folder contains no images ({exts})", "no_images"))
            for item in found:
                add(item)
        elif exists or path.is_symlink():  # a broken link too: the screener says where it points
            add(WorkItem(argument))  # an explicit file is always tried, whatever its suffix
        elif _GLOB_CHARS & set(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            files = [m for m in matches if not os.path.isdir(m)]
            if not files:
                add(WorkItem(argument, "pattern matched no files", "no_match"))
            for match in files:
                add(WorkItem(match))
        else:
            add(WorkItem(argument, f"{argument}: no such file or folder", "not_found"))
    return items
