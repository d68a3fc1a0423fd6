"""The per-user caches under ``$XDG_CACHE_HOME/edge-retina``: where they are, when each entry was last
used, and pruning the ones not used for a while (``edge-retina cache info|prune``).

Every cache is a folder of entries (a folder or file each) that can be rebuilt from their source at a
cost: extracted bundle archives, compiled engines, the converter's steps. None of them is ever pruned
on its own, so a host that converts often grows without bound (one such host held 15 GB, most of it
teacher embeddings of old conversions); the user decides when and how much, as with ``pip cache``.

Last use is an entry's modification time: each cache calls :func:`mark_used` when it reuses an entry,
because access times are unreliable (``noatime`` and ``relatime`` mounts). Entries in the making or
being removed carry ``.partial`` or ``.discarded`` in their names; a crashed process leaves them
behind, and pruning removes them once they are old.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no lock, prune relies on KEEP_RECENT_SECONDS alone
    fcntl = None

#: The caches, by folder name, and what each holds (for people: ``cache info``). Only these are ever
#: pruned: a folder found there that is not listed (a user's, a symlink to elsewhere) is shown, never
#: touched.
CACHES = {
    "bundles": "extracted bundle archives",
    "engines": "engines compiled here (OpenVINO, TensorRT), per engine",
    "tensorrt": "TensorRT engines built here, per GPU",
    "convert": "converter steps: exports, calibration, embeddings, engines",
}
#: Name marks of entries in the making or being removed (``bundle.cache``, ``StepCache``, ``discard``).
TRANSIENT_MARKS = (".partial", ".discarded")
#: Entries used this recently are never pruned: a conversion or a screening run may be reading them
#: (a convert reuses its calibration step's folder tens of minutes after looking it up).
KEEP_RECENT_SECONDS = 3600
SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
AGE_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# A run using a cache for a long time (a conversion: its steps read folders looked up an hour before,
# QAT writes its folder only at the end) holds a shared flock on the cache's folder (``in_use``);
# prune takes it exclusively and skips a cache it cannot lock. Locking the folder itself leaves no
# lock file behind to list or prune.


def user_cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/edge-retina/<parts>``, with the XDG default ``~/.cache``: the one place every
    cache (extracted bundles, compiled engines, the converter's steps) is put under."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG Base Directory spec says a relative value is invalid and must be ignored.
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base.joinpath("edge-retina", *parts)


def mark_used(entry: Path) -> None:
    """Record that ``entry`` was used now, so pruning by last use keeps it. Best effort: a cache on
    storage we may not write to still serves its entries."""
    try:
        os.utime(entry)
    except OSError:
        pass


def discard(entry: Path) -> None:
    """Remove a cache entry (folder or file); renamed away first so no reader ever sees it half deleted."""
    doomed = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name[:16]}-", suffix=".discarded"))
    try:
        os.rename(entry, doomed / entry.name)
    except FileNotFoundError:
        pass  # another process discarded it already
    shutil.rmtree(doomed, ignore_errors=True)


@contextlib.contextmanager
def in_use(cache_folder: Path) -> Iterator[None]:
    """Keep ``prune`` out of ``cache_folder`` for the duration (a shared lock: many runs at once)."""
    with _locked(cache_folder, exclusive=False, wait=True):
        yield


@contextlib.contextmanager
def _locked(cache_folder: Path, *, exclusive: bool, wait: bool) -> Iterator[bool]:
    """Hold the cache's lock; yields whether it was taken (False: held by others, and not ``wait``)."""
    if fcntl is None:
        yield True
        return
    cache_folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache_folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@dataclass(frozen=True)
class CacheEntry:
    cache: str
    path: Path
    size_bytes: int
    last_used: float  # seconds since the epoch

    @property
    def transient(self) -> bool:
        """In the making or being removed (or left so by a process that crashed)."""
        return any(mark in self.path.name for mark in TRANSIENT_MARKS)

    def to_dict(self) -> dict:
        return {"cache": self.cache, "path": str(self.path), "size_bytes": self.size_bytes,
                "last_used": _iso(self.last_used), "transient": self.transient}


@dataclass(frozen=True)
class CacheSummary:
    name: str
    path: Path
    entries: int
    size_bytes: int
    oldest_use: float | None
    newest_use: float | None

    @property
    def holds(self) -> str:
        return CACHES.get(self.name, "")

    def to_dict(self) -> dict:
        return {"name": self.name, "path": str(self.path), "holds": self.holds, "entries": self.entries,
                "size_bytes": self.size_bytes, "oldest_use": _iso(self.oldest_use),
                "newest_use": _iso(self.newest_use)}


@dataclass
class PruneReport:
    dry_run: bool
    removed: list[CacheEntry] = field(default_factory=list)
    kept: list[CacheEntry] = field(default_factory=list)
    #: Entries that could not be removed, with why (permissions, a file system error).
    failed: list[tuple[CacheEntry, str]] = field(default_factory=list)
    #: Caches left alone because a run is using them (``in_use``).
    busy: list[str] = field(default_factory=list)
    max_bytes: int | None = None

    @property
    def kept_bytes(self) -> int:
        return sum(e.size_bytes for e in self.kept) + sum(e.size_bytes for e, _ in self.failed)

    @property
    def over_limit(self) -> bool:
        """Still above ``max_bytes``: what is left was used too recently to prune (or failed)."""
        return self.max_bytes is not None and self.kept_bytes > self.max_bytes

    def to_dict(self) -> dict:
        return {"dry_run": self.dry_run, "max_bytes": self.max_bytes,
                "removed": [e.to_dict() for e in self.removed],
                "removed_bytes": sum(e.size_bytes for e in self.removed),
                "kept_entries": len(self.kept) + len(self.failed), "kept_bytes": self.kept_bytes,
                "over_limit": self.over_limit, "busy": self.busy,
                "failed": [{**e.to_dict(), "error": why} for e, why in self.failed]}


def cache_names(root: Path | None = None) -> list[str]:
    """The folders under ``root`` (default ``user_cache_dir()``), known caches first; a symlink is not
    one of ours, whatever it points to."""
    root = root or user_cache_dir()
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink()) if root.is_dir() else []
    return [n for n in CACHES if n in found] + [n for n in found if n not in CACHES]


def cache_entries(name: str, root: Path | None = None) -> list[CacheEntry]:
    """The entries of one cache, oldest use first."""
    folder = (root or user_cache_dir()) / name
    entries = []
    for path in folder.iterdir() if folder.is_dir() else ():
        try:
            entries.append(CacheEntry(name, path, _size(path), path.lstat().st_mtime))
        except FileNotFoundError:  # removed by another process while we looked
            continue
    return sorted(entries, key=lambda e: e.last_used)


def summarise(root: Path | None = None) -> list[CacheSummary]:
    root = root or user_cache_dir()
    summaries = []
    for name in cache_names(root):
        entries = cache_entries(name, root)
        uses = [e.last_used for e in entries]
        summaries.append(CacheSummary(name, root / name, len(entries), sum(e.size_bytes for e in entries),
                                      min(uses, default=None), max(uses, default=None)))
    return summaries


def prune(
    *,
    names: Iterable[str] | None = None,
    max_bytes: int | None = None,
    unused_seconds: float | None = None,
    dry_run: bool = False,
    root: Path | None = None,
    now: float | None = None,
) -> PruneReport:
    """Remove entries of the caches ``names`` (default: every one of ``CACHES`` there is) not used for
    ``unused_seconds``, then the least recently used until they hold at most ``max_bytes`` together.
    Transient leftovers go too. Entries used within ``KEEP_RECENT_SECONDS`` always stay, and so does a
    cache a run holds ``in_use``. ``dry_run``: say what would go, remove nothing.
    """
    if max_bytes is None and unused_seconds is None:
        raise ValueError("prune needs max_bytes or unused_seconds")
    root = root or user_cache_dir()
    now = time.time() if now is None else now
    present = cache_names(root)
    chosen = [n for n in (names or CACHES) if n in CACHES and n in present]
    report = PruneReport(dry_run=dry_run, max_bytes=max_bytes)
    with contextlib.ExitStack() as locks:
        free = [n for n in chosen if locks.enter_context(_locked(root / n, exclusive=True, wait=False))]
        report.busy = [n for n in chosen if n not in free]
        entries = sorted((e for n in free for e in cache_entries(n, root)), key=lambda e: e.last_used)
        report.kept = [e for e in entries if now - e.last_used < KEEP_RECENT_SECONDS]
        total = sum(e.size_bytes for e in entries)
        for entry in (e for e in entries if now - e.last_used >= KEEP_RECENT_SECONDS):  # oldest use first
            stale = unused_seconds is not None and now - entry.last_used >= unused_seconds
            if not (entry.transient or stale or (max_bytes is not None and total > max_bytes)):
                report.kept.append(entry)
                continue
            try:
                if not dry_run:
                    discard(entry.path)
            except OSError as exc:
                report.failed.append((entry, exc.strerror or str(exc)))
                continue
            report.removed.append(entry)
            total -= entry.size_bytes
    return report


def parse_size(text: str) -> int:
    """Bytes from "500M", "20G", "1.5GB" or a plain number, in powers of 1000 as ``cache info`` shows
    sizes (``rich.filesize.decimal``). Hand-written: click has no size type, and this is our only one."""
    cleaned = text.strip().lower().replace(" ", "").removesuffix("b")
    unit = cleaned[-1:] if cleaned[-1:] in SIZE_UNITS else ""
    try:
        value = float(cleaned.removesuffix(unit))
    except ValueError:
        value = -1
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"not a size: {text!r} (examples: 500M, 20G)")
    return int(value * SIZE_UNITS[unit])


def parse_age(text: str) -> float:
    """Seconds from "30d", "12h", "90m" or "2w"."""
    cleaned = text.strip().lower()
    unit = cleaned[-1:]
    try:
        value = float(cleaned[:-1]) if unit in AGE_UNITS else -1
    except ValueError:
        value = -1
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"not an age: {text!r} (examples: 30d, 12h, 2w)")
    return value * AGE_UNITS[unit]


def _size(path: Path) -> int:
    """Bytes on disk of a file or a folder's files (links not followed; files vanishing meanwhile skipped)."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return total


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))
