"""Tampering with a bundle archive the way anyone handling the file could: members appended after
the signed ones (shared by the reliability tests and benchmarks/bench_reliability.py)."""
from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

#: PAX headers of a sparse member (as GNU tar --sparse writes them): 512 stored bytes declaring 4 GiB.
SPARSE_4GIB = {"GNU.sparse.map": "0,512", "GNU.sparse.size": str(4 << 30)}


def append_members(archive: Path, copy: Path, members: dict[str, bytes],
                   pax: dict[str, dict[str, str]] | None = None) -> Path:
    """A copy of ``archive`` with ``members`` (and their PAX headers) added after its own."""
    shutil.copy(archive, copy)
    with tarfile.open(copy, "a", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.pax_headers = (pax or {}).get(name, {})
            tar.addfile(info, io.BytesIO(data))
    return copy
