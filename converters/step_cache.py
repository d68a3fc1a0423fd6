"""The converter's step cache: each step writes into ``<root>/<step>-<key>/``, where the key hashes the
content of the step's inputs, so a re-run after a failure resumes at the failed step and a re-run with
one more target builds only that target.

Keys are built from ``encoder_fingerprint`` (a torch module's class and weights), file sha256s and
``files_fingerprint`` (image files' paths, sizes and dates: cheap, and they change when a file does).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable

from edge_retina.user_caches import mark_used, user_cache_dir

#: Bump when a step's output format changes, so old cache entries are not reused.
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edge-retina/convert`` (``edge_retina.user_caches``: ``edge-retina cache prune``)."""
    return user_cache_dir("convert")


class StepCache:
    """``<root>/<step>-<key>/`` folders, complete once their marker file exists."""

    MARKER = ".complete"

    def __init__(self, root: Path):
        self.root = Path(root)

    @staticmethod
    def key(step: str, parts: Any) -> str:
        blob = json.dumps([CACHE_VERSION, step, parts], sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def run(self, step: str, parts: Any, make: Callable[[Path], None]) -> tuple[Path, bool]:
        """(folder, whether it came from the cache). ``make`` fills a fresh folder; only a ``make``
        that returns turns it into the step's folder, so a failure leaves nothing to reuse."""
        final = self.root / f"{step}-{self.key(step, parts)}"
        if (final / self.MARKER).is_file():
            mark_used(final)
            return final, True
        # One partial folder per process: two conversions sharing a cache never write into each other's.
        partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            make(partial)
            (partial / self.MARKER).write_text("")
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
        except OSError:
            if not (final / self.MARKER).is_file():  # not another process finishing the same step first
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return final, False


def encoder_fingerprint(encoder: Any) -> str:
    """sha256 of a torch module's class and weights: the export step's key."""
    digest = hashlib.sha256(f"{type(encoder).__module__}.{type(encoder).__qualname__}".encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def files_fingerprint(paths: Iterable[Path]) -> list[tuple[str, str]]:
    """(path, sha256 of the contents) per file.

    Contents, not modification times: a dataset copied or re-provisioned without its times (seen
    here: the shared datasets arrive with new times every session) keeps its cached steps, and a
    file rewritten within the same timestamp cannot serve a stale step. Hashing the ~240 MB of the
    shared datasets takes about half a second, and each file once per process (a convert keys three
    steps on overlapping photo lists).
    """
    result = []
    for path in paths:
        stat = Path(path).stat()
        result.append((str(path), _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)))
    return result


@functools.lru_cache(maxsize=None)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's contents; size and time only make the in-process memo forget a changed file."""
    digest = hashlib.sha256()  # hashlib.file_digest would do, from Python 3.11 (we support 3.10)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
