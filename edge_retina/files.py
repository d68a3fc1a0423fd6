"""Files that must be right after a crash: streamed sha256 and atomic, durable writes.

Shared by bundles, installs, TensorRT engine caches and calibration sets. Engines can be hundreds of
MB, so hashes are streamed; a file that others read (a manifest, a signature, the install pointer, an
engine) is replaced by write-to-temporary, fsync, rename, fsync of the directory, so a power cut leaves
the old version or the new one, never a torn file.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

CHUNK_BYTES = 1 << 20
#: Mode of files we write: world-readable (mkstemp's 0600 would hide a bundle's files from a service user).
FILE_MODE = 0o644


def sha256_file(path: str | os.PathLike[str]) -> str:
    # hashlib.file_digest does this from Python 3.11; the package still supports 3.10.
    with open(path, "rb") as stream:
        return sha256_stream(stream)


def sha256_stream(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(CHUNK_BYTES):
        digest.update(chunk)
    return digest.hexdigest()


def copy_and_hash(source: BinaryIO, destination: Path) -> str:
    """Copy ``source`` into the new file ``destination`` (which must not exist), flushed to disk.

    Returns the sha256 of the bytes written, so what a manifest pins is exactly what is on disk.
    """
    digest = hashlib.sha256()
    with open(destination, "xb") as out:
        while chunk := source.read(CHUNK_BYTES):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def fsync_directory(path: Path) -> None:
    """Make the entries of ``path`` (creations, renames, removals) durable."""
    if os.name != "posix":  # Windows cannot open a directory for this
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: Path, *, mode: int = FILE_MODE) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` (durably, in one rename) only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp_name, mode)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_atomically(path: Path, data: bytes, *, mode: int = FILE_MODE) -> None:
    """Replace ``path`` by a complete, durable file holding ``data``."""
    with atomic_output(path, mode=mode) as out:
        out.write(data)
