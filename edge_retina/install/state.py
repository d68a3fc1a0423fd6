"""The install root's on-disk state: which A/B slot is active, which is the fallback, what is on trial.

``state.json`` is the single pointer the device trusts. It is only ever replaced whole: written to
a temporary file, fsynced, renamed over the old one, and the directory fsynced, so after a power
cut it is either the old state or the new one, never a mix. Everything else under the root (slot
contents, staging directories) is made consistent with it by the procedures in ``slots.py``.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from edge_retina.errors import EdgeRetinaError
from edge_retina.files import fsync_directory, write_atomically

STATE_FILE = "state.json"
SLOTS_DIR = "slots"
SLOT_NAMES = ("a", "b")
LOCK_FILE = ".lock"
FORMAT_VERSION = 1

# Slot statuses
TRIAL = "trial"        # installed, its self-test has not passed yet
GOOD = "good"          # passed its self-test
REJECTED = "rejected"  # failed its self-test or was rolled back from while on trial


class InstallError(EdgeRetinaError):
    """An install, start or rollback cannot proceed; the message says why and what to do."""


@dataclass
class SlotRecord:
    status: str
    manifest_sha256: str
    key_id: str
    installed: str  # UTC, YYYY-MM-DDTHH:MM:SSZ
    source: str     # what was installed (path as given)
    note: str = ""  # the self-test outcome or the reason for a rollback


@dataclass
class InstallState:
    active: str | None = None
    previous: str | None = None  # the slot a failed or manual rollback returns to
    trial_starts: int | None = None  # starts of the active slot while on trial; None once it is good
    slots: dict[str, SlotRecord] = field(default_factory=dict)

    @property
    def on_trial(self) -> bool:
        return self.trial_starts is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "active": self.active,
            "previous": self.previous,
            "trial_starts": self.trial_starts,
            "slots": {name: asdict(record) for name, record in sorted(self.slots.items())},
        }

    @classmethod
    def from_dict(cls, d: Any, source: str) -> "InstallState":
        try:
            if d["format_version"] != FORMAT_VERSION:
                raise InstallError(f"{source}: unknown format_version {d['format_version']!r}")
            state = cls(
                active=d["active"], previous=d["previous"], trial_starts=d["trial_starts"],
                slots={name: SlotRecord(**record) for name, record in d["slots"].items()},
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise InstallError(f"{source} is damaged ({type(exc).__name__}: {exc}); the install root needs repair") from None
        for name in (state.active, state.previous):
            if name is not None and name not in SLOT_NAMES:
                raise InstallError(f"{source}: unknown slot {name!r}")
        return state


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def slot_path(root: Path, name: str) -> Path:
    return root / SLOTS_DIR / name


def read_state(root: Path) -> InstallState:
    """The root's state; an empty state when nothing was ever installed."""
    path = root / STATE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return InstallState()
    except OSError as exc:
        raise InstallError(f"cannot read {path} ({exc.strerror or exc})") from None
    try:
        d = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InstallError(f"{path} is damaged ({exc}); the install root needs repair") from None
    return InstallState.from_dict(d, str(path))


def write_state(root: Path, state: InstallState) -> None:
    """Replace state.json atomically and durably (the commit point of every procedure)."""
    data = (json.dumps(state.to_dict(), indent=2, sort_keys=True) + "\n").encode("utf-8")
    write_atomically(root / STATE_FILE, data)


def fsync_tree(path: Path) -> None:
    """fsync every directory under ``path`` (files are fsynced when written), deepest first."""
    for directory, _, _ in sorted(os.walk(path), key=lambda entry: -entry[0].count(os.sep)):
        fsync_directory(Path(directory))


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold the root's lock: one install, start or rollback at a time across processes.

    flock is released by the kernel when the process dies, so a power cut or a kill never leaves a
    stale lock behind (devices run Linux; fcntl is POSIX-only).
    """
    with open(root / LOCK_FILE, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
