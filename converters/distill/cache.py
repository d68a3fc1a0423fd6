"""Caches keyed by image content (sha256 of the file's bytes), so epochs never redo the expensive part.

- the student's prepared pixels (uint8, after the shared preprocessing with the student's spec);
- the teacher's embeddings of each view of a photo (key ``<sha256>:<view>``; after the shared
  preprocessing with the teacher's spec).

Each cache is one ``.npz`` file (``keys`` + ``values``) whose name carries what its values depend
on (the input spec's hash; for embeddings also the teacher checkpoint's and the views' recipe), so a
renamed, moved or duplicated photo is a hit and a new teacher, spec or recipe never reuses stale values.
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edge_retina.preprocess.spec import InputSpec


def content_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ContentCache:
    """``{content sha256: array}`` of equal-shaped arrays, stored in one ``.npz`` file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._index: dict[str, int] = {}
        self._values: np.ndarray | None = None
        if self.path.is_file():
            with np.load(self.path, allow_pickle=False) as data:
                self._values = data["values"]
                self._index = {str(k): i for i, k in enumerate(data["keys"])}

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def get(self, keys: Sequence[str]) -> np.ndarray:
        return self._values[[self._index[k] for k in keys]]

    def add(self, keys: Sequence[str], values: np.ndarray) -> None:
        """Add new entries and write the file (atomically: a killed run never leaves half a cache)."""
        new = [i for i, k in enumerate(keys) if k not in self._index]
        if not new:
            return
        start = len(self._index)
        for offset, i in enumerate(new):
            self._index[keys[i]] = start + offset
        added = np.asarray(values)[new]
        self._values = added if self._values is None else np.concatenate([self._values, added])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.array(list(self._index)), values=self._values)
        tmp.replace(self.path)


def _prepare_one(job: tuple[str, list[dict]]) -> list[np.ndarray] | str:
    from edge_retina.errors import ImageError
    from edge_retina.preprocess import Preprocessor

    path, specs = job
    data = Path(path).read_bytes()
    try:
        return [Preprocessor(InputSpec.from_dict(s)).prepare(data).image for s in specs]
    except ImageError as exc:
        return f"{path}: {exc}"


def prepare_images(paths: Sequence[Path], specs: Sequence[InputSpec], workers: int = 2,
                   progress: Callable[[int], None] | None = None) -> tuple[list[list[np.ndarray]], list[int], list[str]]:
    """Each image through the shared ``Preprocessor`` once per distinct spec.

    Returns per kept image its uint8 images (in the order of ``specs``), the kept indices, and the
    reasons the others were skipped (unreadable images do not stop a distillation run).
    """
    distinct = list({s.sha256(): s for s in specs}.values())
    position = [next(i for i, d in enumerate(distinct) if d.sha256() == s.sha256()) for s in specs]
    jobs = [(str(p), [d.to_dict() for d in distinct]) for p in paths]
    images, kept, skipped = [], [], []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for i, result in enumerate(pool.map(_prepare_one, jobs, chunksize=16)):
            if isinstance(result, str):
                skipped.append(result)
            else:
                images.append([result[j] for j in position])
                kept.append(i)
            if progress:
                progress(1)
    return images, kept, skipped
