"""Streamed sha256 of files: engines can be hundreds of MB, so they are never read whole."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

CHUNK_BYTES = 1 << 20


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
