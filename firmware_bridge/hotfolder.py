"""Hot-folder mode, for cameras that can only write files: screen each new capture once.

For every image file that has stopped changing (its mtime is at least ``settle_seconds`` old, so a
capture still being written is left alone), the watcher:

1. journals it as pending in the result store (keyed by the sha256 of its content),
2. screens it, unless the journal already holds its result, and commits the result,
3. writes the sidecar ``<image name>.result.json`` atomically (temporary file, fsync, rename, fsync
   of the directory): a reader sees no sidecar or a whole one, never half of one.

The sidecar, whose ``image_sha256`` must match the file, is the "done" mark: after a crash at any
point a restart either finds it (nothing repeated), finds the committed result and only writes the
sidecar (nothing screened twice), or screens an image whose result was never committed (nothing
lost). A file replaced by a new capture under the same name has a new sha256 and is screened again.
A journalled capture that was deleted or replaced before its result was committed (a crash, then
someone tidied the folder) is closed with a ``not_found`` error rather than left pending forever.

What is not a capture is skipped with one warning, and never blocks the watcher: a FIFO or device
under an image name (opened without blocking, then refused), a symlink loop, a link to a missing file
(until the file appears). A writer that pauses
for longer than the settle time gets its partial file screened (as ``corrupt``, with a sidecar);
when the file is complete its new sha256 makes it a new capture, screened again, and its sidecar
is replaced. A sidecar that cannot be written (the folder went read-only) is warned about once and
tried again at each scan; the journal keeps its result meanwhile.

The folder is polled rather than watched with inotify: polling works the same on every file system a
camera writes to (SMB/NFS shares and FAT-formatted USB media send no inotify events) and needs no
extra dependency; a capture every few seconds makes a one-second poll cheap.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator

from edge_retina.files import write_atomically
from edge_retina.pipeline import ScreeningPipeline
from edge_retina.preprocess.decode import IMAGE_EXTENSIONS, broken_link
from edge_retina.screener import Result, Screener

from .server import bundle_id
from .store import ResultStore, StoredRequest

log = logging.getLogger("edge_retina.bridge.hotfolder")

SIDECAR_SUFFIX = ".result.json"
ORIGIN = "hotfolder"


@dataclass(frozen=True)
class _Capture:
    """A settled capture, journalled, read once: its bytes go to the screening pipeline."""

    path: Path
    signature: tuple[int, int]  # (size, mtime_ns) when it was read
    data: bytes
    request_id: str
    stored: StoredRequest | None  # the journal's row, when it already holds the result


class HotFolder:
    def __init__(self, screener: Screener, store: ResultStore, folder: str | Path, *, settle_seconds: float = 2.0,
                 workers: int | None = None):
        self.screener = screener
        self.store = store
        self.folder = Path(folder)
        self.settle_seconds = settle_seconds
        self.bundle_id = bundle_id(screener)
        # Decode and preprocessing of a burst of captures on every core (edge_retina.pipeline).
        self.pipeline = ScreeningPipeline(screener, workers=workers)
        # (size, mtime_ns) of files already handled in this run: spares re-hashing them every poll.
        self._handled: dict[Path, tuple[int, int]] = {}
        # Why a path is skipped, or its sidecar not written, while that holds: warned about once, not
        # at every scan (a read-only folder would otherwise log a line per capture every second).
        self._warned: dict[Path, str] = {}
        #: The captures the last scan left without a sidecar (unreadable, or the sidecar could not be
        #: written): tried again at the next scan; `hotfolder --once` exits 1 for them.
        self.unfinished: list[Path] = []

    def captures(self) -> list[Path]:
        """Image files under the folder (hidden files and folders skipped), in name order."""
        found = []
        for root, dirs, files in os.walk(self.folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(Path(root) / name)
        return found

    def scan_once(self) -> list[Path]:
        """Handle every settled capture not handled yet; returns the sidecars written."""
        self.close_orphans()
        self.unfinished = []
        restored: list[Path] = []  # sidecars written from results the journal already held
        screened: list[Path] = []
        # The captures are read and journalled lazily, on the pipeline's feeder thread: at most its
        # queue limit of them is in memory at once, however many arrived.
        to_screen = self._journalled(restored)
        for capture, result in self.pipeline.run(to_screen, source=lambda c: c.data, name=lambda c: c.path.name):
            outcome = {**result.to_dict(), "bundle_id": self.bundle_id}
            self._finish(capture, self.store.complete(capture.request_id, outcome), screened)
        return restored + screened

    def _journalled(self, restored: list[Path]) -> Iterator[_Capture]:
        """Settled captures without an up-to-date sidecar, journalled as pending; those whose result
        the journal already holds only get their sidecar (into ``restored``) and are not yielded."""
        now = time.time()
        for path in self.captures():
            try:
                info = path.stat()
            except FileNotFoundError:  # removed between the listing and now, or a link to a missing file
                if why := broken_link(path):
                    self._skip(path, why)
                continue
            except OSError as exc:  # a symlink loop, a name the file system refuses...
                self._skip(path, f"cannot be read ({exc.strerror})")
                continue
            signature = (info.st_size, info.st_mtime_ns)
            if self._handled.get(path) == signature or now - info.st_mtime < self.settle_seconds:
                continue
            try:
                capture = self._journal(path, signature)
            except OSError as exc:  # unreadable now (permissions, a share gone): tried again next scan
                self._warn_once(path, f"cannot be read ({exc.strerror or exc}); tried again at each scan")
                self.unfinished.append(path)
                continue
            if capture is None:
                self._handled[path] = signature
            elif capture.stored is not None and capture.stored.state == "done":
                self._finish(capture, capture.stored, restored)
            else:
                yield capture

    def _skip(self, path: Path, why: str) -> None:
        self._warn_once(path, f"{why}; skipped")

    def _warn_once(self, path: Path, why: str) -> None:
        if self._warned.get(path) != why:
            log.warning("%s: %s", path, why)
            self._warned[path] = why

    def _journal(self, path: Path, signature: tuple[int, int]) -> _Capture | None:
        """Read a capture and journal it unless its sidecar is up to date or it is not a regular
        file (then None)."""
        data = read_capture(path)
        if data is None:
            self._skip(path, "not a regular file (a FIFO or device)")
            return None
        sha = hashlib.sha256(data).hexdigest()
        if _sidecar_sha(sidecar_path(path)) == sha:
            return None
        request_id = f"{ORIGIN}:{sha[:40]}"
        stored = self.store.get(request_id)
        if stored is None:
            self.store.accept(request_id, sha, {"path": str(path.relative_to(self.folder))}, None, origin=ORIGIN)
        return _Capture(path, signature, data, request_id, stored)

    def _finish(self, capture: _Capture, stored: StoredRequest, written: list[Path]) -> None:
        sidecar = sidecar_path(capture.path)
        try:
            write_sidecar(sidecar, stored, capture.path, self.folder)
        except OSError as exc:  # the folder went read-only or away: the journal keeps the result
            self._warn_once(sidecar, f"cannot be written ({exc.strerror or exc}); the result is in the journal, "
                                     "tried again at each scan")
            self.unfinished.append(capture.path)
            return
        for path in (capture.path, sidecar):  # a problem that comes back is warned about again
            self._warned.pop(path, None)
        log.info("%s -> %s", capture.path, stored.result.get("status") if stored.result else None)
        self._handled[capture.path] = capture.signature
        written.append(sidecar)

    def close_orphans(self) -> list[str]:
        """Close pending journal entries whose capture is gone (or holds other bytes now) with an error
        result, so the journal does not wait forever for an image nobody can screen. Returns their ids."""
        closed = []
        for row in self.store.pending(origin=ORIGIN):
            path = self.folder / row.meta.get("path", "")
            try:
                same = hashlib.sha256(path.read_bytes()).hexdigest() == row.image_sha256
            except OSError:
                same = False
            if same:
                continue  # still there: the scan screens it
            gone = Result(str(row.meta.get("path")), error="the capture was removed or replaced before it was screened",
                          error_code="not_found").to_dict()
            self.store.complete(row.request_id, {**gone, "bundle_id": self.bundle_id})
            log.warning("%s: closed without a result (%s)", row.meta.get("path"), gone["error"])
            closed.append(row.request_id)
        return closed

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        while not stop.is_set():
            self.scan_once()
            stop.wait(interval)

    def close(self) -> None:
        self.pipeline.close()


def read_capture(path: Path) -> bytes | None:
    """The bytes of ``path``, or None when it is not a regular file. Opened without blocking and
    checked on the open file: a FIFO under an image name would block a plain read for ever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as stream:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return stream.read()


def sidecar_path(image: Path) -> Path:
    return image.with_name(image.name + SIDECAR_SUFFIX)


def _sidecar_sha(sidecar: Path) -> str | None:
    try:
        return json.loads(sidecar.read_text())["image_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_sidecar(sidecar: Path, stored: StoredRequest, image: Path, folder: Path) -> None:
    """Write the sidecar in one durable rename: a reader never sees half of one.

    ``meta.path`` is this capture's own path: two captures with the same bytes share one journal row
    (keyed by content), whose path is the first one's."""
    record: dict[str, Any] = stored.record()
    record["meta"] = {**record["meta"], "path": str(image.relative_to(folder))}
    record["image"] = image.name
    write_atomically(sidecar, json.dumps(record, indent=2).encode())
