"""The bridge's durable request journal and result store (SQLite, WAL mode, synchronous commits).

A request goes through two committed states:

- ``pending``: accepted and journalled. Its image and metadata are on disk, so a crash before it is
  screened loses nothing: the next start queues it again. (The bridge journals a request only when
  it is not screened within ``journal_after``; one screened sooner goes straight to ``done``.)
- ``done``: its result is committed (exactly once: a row leaves ``pending`` in one transaction, and
  a ``done`` row is never written again) before the RESULT is sent. The image is dropped then.

Request ids are the idempotency key: a retried request (same id, same image) finds its row and gets
the stored result; the same id with a different image is refused.

One connection shared behind a lock: the bridge's writes are small and serial, and a single
connection keeps the WAL checkpointing in one place.
"""
from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id   TEXT NOT NULL UNIQUE,
    image_sha256 TEXT NOT NULL,
    meta         TEXT NOT NULL,
    image        BLOB,
    origin       TEXT NOT NULL,  -- 'bridge' (a SCREEN message) or 'hotfolder' (a file; image not copied)
    state        TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    accepted_us  INTEGER NOT NULL,  -- microseconds since the epoch (UTC): exact in ISO form
    completed_us INTEGER,
    result       TEXT
);
CREATE INDEX IF NOT EXISTS requests_completed ON requests (completed_us) WHERE state = 'done';
"""


@dataclass(frozen=True)
class StoredRequest:
    seq: int
    request_id: str
    image_sha256: str
    meta: dict[str, Any]
    state: str
    accepted_us: int
    completed_us: int | None
    result: dict[str, Any] | None
    image: bytes | None = None

    def record(self) -> dict[str, Any]:
        """The JSON form used by RESULT messages and ``bridge results``."""
        return {
            "request_id": self.request_id,
            "image_sha256": self.image_sha256,
            "meta": self.meta,
            "accepted_at": iso_time(self.accepted_us),
            "completed_at": None if self.completed_us is None else iso_time(self.completed_us),
            "result": self.result,
        }


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def now_us() -> int:
    return time.time_ns() // 1000


def iso_time(epoch_us: int) -> str:
    return (_EPOCH + epoch_us * _MICROSECOND).isoformat(timespec="microseconds")


def parse_time(text: str) -> int:
    """Microseconds since the epoch from an ISO-8601 time (naive means UTC) or a number of seconds.

    Integer microseconds, the resolution of the ISO times the store prints, so that
    ``--since <a printed completed_at>`` excludes exactly that row and everything before it."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds):  # "inf", "nan", "1e400": no moment in time
            raise ValueError(f"{text!r} is not a finite number of seconds")
        return round(seconds * 1e6)
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return (moment - _EPOCH) // _MICROSECOND
    except OverflowError:  # an offset that pushes year 1 or 9999 out of range
        raise ValueError(f"{text!r} is out of range") from None


class ResultStore:
    def __init__(self, path: str | Path, *, read_only: bool = False):
        self.path = Path(path)
        self._lock = threading.Lock()
        if read_only:
            self._db = _open_read_only(self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        # 64 KiB pages (for a new store; an existing one keeps its own): an image is journalled and
        # dropped as a chain of overflow pages, and 16x fewer of them made a 9 MB raw frame's journal
        # and drop 2-3x faster, a 1.3 MB JPEG's 1.3-2.5x, rows without an image no slower (BENCHMARKS.md
        # "Throughput"). It must be set before WAL mode, which fixes the page size.
        self._db.execute("PRAGMA page_size=65536")
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk (WAL fsynced) before execute returns, so "persisted before
        # RESULT is sent" holds across a power cut, not only a process crash.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get(self, request_id: str) -> StoredRequest | None:
        with self._lock:
            row = self._db.execute(_SELECT + " WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else _row(row)

    def accept(self, request_id: str, image_sha256: str, meta: dict[str, Any], image: bytes | memoryview | None,
               *, origin: str = "bridge", accepted_us: int | None = None) -> bool:
        """Journal a new pending request; False if the id is already known (nothing written): in
        particular a request whose result was committed first is never made pending again."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO requests (request_id, image_sha256, meta, image, origin, state, accepted_us)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                (request_id, image_sha256, json.dumps(meta), image, origin, now_us() if accepted_us is None else accepted_us),
            )
            return cursor.rowcount == 1

    def complete(self, request_id: str, result: dict[str, Any]) -> StoredRequest:
        """Commit the result of a pending request, once; returns the stored row either way."""
        with self._lock:
            self._db.execute(
                "UPDATE requests SET state = 'done', result = ?, completed_us = ?, image = NULL"
                " WHERE request_id = ? AND state = 'pending'",
                (json.dumps(result), now_us(), request_id),
            )
            row = self._db.execute(_SELECT + " WHERE request_id = ?", (request_id,)).fetchone()
        return _row(row)

    def settle(self, request_id: str, image_sha256: str, meta: dict[str, Any], accepted_us: int,
               result: dict[str, Any], *, origin: str = "bridge") -> StoredRequest:
        """Commit the result of a request journalled or not (the bridge journals an image only when
        its screening is slow, see server.py): a pending row becomes done, else a done row is
        written; one transaction, once. Returns the stored row."""
        with self._lock:
            self._db.execute(
                "INSERT INTO requests (request_id, image_sha256, meta, origin, state, accepted_us, completed_us, result)"
                " VALUES (?, ?, ?, ?, 'done', ?, ?, ?)"
                " ON CONFLICT (request_id) DO UPDATE SET state = 'done', result = excluded.result,"
                " completed_us = excluded.completed_us, image = NULL WHERE state = 'pending'",
                (request_id, image_sha256, json.dumps(meta), origin, accepted_us, now_us(), json.dumps(result)),
            )
            row = self._db.execute(_SELECT + " WHERE request_id = ?", (request_id,)).fetchone()
        return _row(row)

    def pending(self, origin: str = "bridge") -> list[StoredRequest]:
        """Accepted requests not yet screened, oldest first, with their images (for a restart)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, request_id, image_sha256, meta, state, accepted_us, completed_us, result, image"
                " FROM requests WHERE state = 'pending' AND origin = ? ORDER BY seq", (origin,)
            ).fetchall()
        return [_row(r) for r in rows]

    def done_since(self, since_us: int) -> Iterator[StoredRequest]:
        with self._lock:
            rows = self._db.execute(
                _SELECT + " WHERE state = 'done' AND completed_us > ? ORDER BY completed_us, seq", (since_us,)
            ).fetchall()
        return (_row(r) for r in rows)

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state").fetchall()
        return {"pending": 0, "done": 0, **dict(rows)}


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write (SQLite's mode=ro), to a file that holds a result store: a reader
    (`bridge results`) must neither create a store nor add its tables to another file (an empty file
    is an empty SQLite database: opened read-write, it would become a store). sqlite3.Error otherwise."""
    db = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    try:
        (tables,) = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'requests'"
                               ).fetchone()
        if not tables:
            raise sqlite3.DatabaseError("it is not a bridge result store (it has no requests table)")
    except sqlite3.Error:
        db.close()
        raise
    return db


_SELECT = "SELECT seq, request_id, image_sha256, meta, state, accepted_us, completed_us, result FROM requests"


def _row(row: tuple) -> StoredRequest:
    seq, request_id, sha, meta, state, accepted, completed, result, *image = row
    return StoredRequest(
        seq, request_id, sha, json.loads(meta), state, accepted, completed,
        None if result is None else json.loads(result), image[0] if image else None,
    )
