"""Where bundle archives are extracted: one directory per archive, named by the archive's sha256.

Keyed by content, so a re-downloaded or renamed archive reuses its extraction and a changed one never
does. Each extraction goes to a private staging directory that is renamed into place only when
complete, so concurrent loads of the same archive are safe (the first rename wins, the others
discard their copy) and a directory under its final name is always a whole extraction.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from edge_retina.bundle.archive import extract_archive
from edge_retina.errors import BundleError
from edge_retina.user_caches import mark_used, user_cache_dir


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/edge-retina/bundles`` (``edge_retina.user_caches``: ``edge-retina cache prune``)."""
    return user_cache_dir("bundles")


def extracted(archive: Path, archive_sha256: str, cache_dir: Path) -> tuple[Path, bool]:
    """The extraction of ``archive`` in ``cache_dir``: (directory, whether it was extracted just now)."""
    final = cache_dir / archive_sha256
    if final.is_dir():
        mark_used(final)
        return final, False
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{archive_sha256[:16]}-", suffix=".partial"))
    except OSError as exc:
        raise BundleError(f"cannot create the bundle cache in {cache_dir} ({exc.strerror or exc})") from None
    try:
        extract_archive(archive, staging)
        os.rename(staging, final)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if not final.is_dir():
            raise BundleError(f"cannot extract {archive} into {cache_dir} ({exc.strerror or exc})") from None
        # rename refuses a non-empty target: another process finished the same extraction first.
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final, True
