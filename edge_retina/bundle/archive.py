"""The single-file form of a bundle: an uncompressed POSIX tar named ``*.erb.tar``.

Plain tar rather than gzip: engines are dense float/int8 weights that gzip shrinks by only 7-16 %,
while gunzip costs a single-threaded pass over every byte on each first load (measured in
docs/BUNDLE_FORMAT.md). Transfer channels compress anyway if they want to.

Writing is deterministic (fixed order, mtime, owner and mode), so the same bundle always packs to
the same bytes and an archive's sha256 identifies its content. Reading refuses, rather than
sanitises, anything that is not a plain file or directory with a safe relative name: extraction
creates each file itself and never follows or creates links. A bundle is exactly its manifest, its
signature and the files the manifest lists: members outside the signature (anyone handling the
archive could add them) and sparse members (a few bytes declaring gigabytes) are refused before
anything is written, so an extraction never writes more than the archive's own size. The standard library's extraction
filters (``tarfile.data_filter``) are not used because they rewrite some of these cases (absolute
paths, in-tree symlinks) instead of refusing them, and need Python >= 3.10.12.
"""
from __future__ import annotations

import tarfile
from contextlib import contextmanager
from pathlib import Path
from typing import Collection, Iterator, Sequence

from edge_retina.bundle.manifest import Manifest
from edge_retina.bundle.paths import MANIFEST_NAME, MAX_MANIFEST_BYTES, SIGNATURE_NAME, relpath_problem
from edge_retina.errors import BundleError
from edge_retina.files import (
    CHUNK_BYTES,
    FILE_MODE,
    atomic_output,
    copy_and_hash,
    sha256_stream,
)

ARCHIVE_SUFFIX = ".erb.tar"
# 1980-01-01T00:00:00Z: the reproducible-builds convention (the ZIP epoch); tar tools warn about 0.
ARCHIVE_MTIME = 315532800
_GZIP_MAGIC = b"\x1f\x8b"
_BLOCK = tarfile.BLOCKSIZE


def write_archive(root: Path, names: Sequence[str], archive_path: Path) -> Path:
    """Pack ``root/name`` for each name, in the given order, into ``archive_path`` atomically."""
    archive_path = Path(archive_path)
    if not archive_path.name.endswith(ARCHIVE_SUFFIX) or archive_path.name == ARCHIVE_SUFFIX:
        raise BundleError(f"{archive_path}: a bundle archive must be named <something>{ARCHIVE_SUFFIX}")
    with atomic_output(archive_path) as raw:
        with tarfile.open(fileobj=raw, mode="w:", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                source = root / name
                info = tarfile.TarInfo(name)
                info.size = source.stat().st_size
                info.mtime = ARCHIVE_MTIME
                info.mode = FILE_MODE
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(source, "rb") as stream:
                    tar.addfile(info, stream)
    return archive_path


def extract_archive(archive: Path, destination: Path) -> None:
    """Extract ``archive`` into the existing empty directory ``destination`` (BundleError if unsafe)."""
    listed = _listed_names(archive)
    with _open_archive(archive) as tar:
        members = list(_safe_members(tar, archive))  # every header is checked before anything is written
        unlisted = unlisted_members_problem(archive, [name for name, _ in members if name not in listed])
        if unlisted:
            raise BundleError(unlisted)
        for name, member in members:
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            stream = tar.extractfile(member)
            try:
                copy_and_hash(stream, target)
            except FileExistsError:
                raise BundleError(f"{archive}: member {name!r} collides with a directory") from None
            except tarfile.ReadError as exc:
                raise BundleError(f"{archive} is truncated or corrupt: member {name!r} ({exc})") from None


def unlisted_members_problem(archive: Path, unlisted: Sequence[str]) -> str | None:
    """What is wrong with an archive holding ``unlisted``, members its manifest does not list (the
    first few named), or None when it holds none."""
    if not unlisted:
        return None
    shown = ", ".join(repr(n) for n in unlisted[:5])
    if len(unlisted) > 5:
        shown += f" and {len(unlisted) - 5} more"
    return (f"{archive}: refusing members not listed in its {MANIFEST_NAME}: {shown} (a bundle holds only "
            f"its manifest, its signature and the files the manifest lists)")


def _listed_names(archive: Path) -> set[str]:
    """The members a bundle archive may hold: its manifest, signature and the files the manifest lists."""
    manifest = read_small_members(archive, {MANIFEST_NAME}, MAX_MANIFEST_BYTES).get(MANIFEST_NAME)
    if manifest is None:
        raise BundleError(f"{archive} is not a bundle: the archive has no {MANIFEST_NAME}")
    return {MANIFEST_NAME, SIGNATURE_NAME, *Manifest.from_bytes(manifest, source=f"{archive}:{MANIFEST_NAME}").files}


def hash_archive(archive: Path) -> tuple[bytes | None, dict[str, str], str | None]:
    """Read ``archive`` without extracting: (manifest.json bytes or None, {member: sha256}, why the
    reading stopped before the end or None). What was read before any damage is kept: a bundle
    truncated in transfer still shows its manifest (its first member)."""
    manifest_bytes = None
    hashes: dict[str, str] = {}
    try:
        with _open_archive(archive) as tar:
            for name, member in _safe_members(tar, archive):
                stream = tar.extractfile(member)
                try:
                    if name == MANIFEST_NAME:
                        manifest_bytes = stream.read()
                    else:
                        hashes[name] = sha256_stream(stream)
                except tarfile.ReadError as exc:
                    raise BundleError(f"{archive} is truncated or corrupt: member {name!r} ({exc})") from None
    except BundleError as exc:
        return manifest_bytes, hashes, str(exc)
    return manifest_bytes, hashes, None


def read_small_members(archive: Path, names: Collection[str], max_bytes: int) -> dict[str, bytes]:
    """The bytes of those of ``names`` the archive holds (e.g. manifest.json and manifest.sig),
    read without extracting; BundleError for an unsafe archive or a named member over ``max_bytes``."""
    found: dict[str, bytes] = {}
    with _open_archive(archive) as tar:
        for name, member in _safe_members(tar, archive):
            if name not in names:
                continue
            if member.size > max_bytes:
                raise BundleError(f"{archive}: member {name!r} is {member.size} bytes, more than {max_bytes}")
            try:
                found[name] = tar.extractfile(member).read()
            except tarfile.ReadError as exc:
                raise BundleError(f"{archive} is truncated or corrupt: member {name!r} ({exc})") from None
    return found


@contextmanager
def _open_archive(archive: Path) -> Iterator[tarfile.TarFile]:
    """tarfile.open for reading a bundle archive, turning every failure to open into a BundleError."""
    try:
        with open(archive, "rb") as raw:
            magic = raw.read(len(_GZIP_MAGIC))
    except OSError as exc:
        raise BundleError(f"{archive}: cannot read the archive ({exc.strerror or exc})") from None
    if magic == _GZIP_MAGIC:
        raise BundleError(f"{archive} is gzip-compressed; bundle archives are plain tar (gunzip it first)")
    try:
        tar = tarfile.open(archive, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{archive} is not a bundle archive (an uncompressed tar): {exc}") from None
    with tar:
        yield tar


def _safe_members(tar: tarfile.TarFile, archive: Path) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """Yield (bundle-relative name, member) for the regular files; refuse anything unsafe."""
    seen: set[str] = set()
    try:
        for member in tar:
            name = member.name
            # `tar -C bundle -cf x.erb.tar .` writes "./name" members; accept that spelling too.
            if name.startswith("./"):
                name = name[2:]
            if member.isdir():
                if name not in ("", ".") and (problem := relpath_problem(name)):
                    raise BundleError(f"{archive}: refusing directory member: {problem}")
                continue
            if member.issparse():
                raise BundleError(
                    f"{archive}: refusing sparse member {member.name!r} (it declares {member.size:,} bytes "
                    "that the archive does not hold)"
                )
            if not member.isreg():
                raise BundleError(
                    f"{archive}: refusing member {member.name!r}: it is a {_kind(member)}; "
                    "bundle archives hold only regular files and directories"
                )
            if name != MANIFEST_NAME and (problem := relpath_problem(name)):
                raise BundleError(f"{archive}: refusing member: {problem}")
            if name in seen:
                raise BundleError(f"{archive}: member {name!r} appears twice")
            seen.add(name)
            yield name, member
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{archive} is truncated or corrupt ({exc})") from None
    _check_end(tar, archive)


def _check_end(tar: tarfile.TarFile, archive: Path) -> None:
    # tarfile ends iteration silently at the first unreadable header after the first member, so a
    # corrupt or cut-off archive would look like a shorter one. A complete archive ends with at
    # least two zero blocks and nothing but zero padding after them. (TarFile.offset is the end of
    # the last member read; it is not in the documented API but has been stable since Python 2.)
    with open(archive, "rb") as raw:
        raw.seek(tar.offset)
        trailing = 0
        while chunk := raw.read(CHUNK_BYTES):
            if chunk.count(0) != len(chunk):
                raise BundleError(f"{archive} is truncated or corrupt: unreadable data after the last member")
            trailing += len(chunk)
    if trailing < 2 * _BLOCK:
        raise BundleError(f"{archive} is truncated: the end-of-archive marker is missing")


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    return f"member of tar type {member.type!r}"
