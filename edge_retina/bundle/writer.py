"""Making bundles: a directory from a manifest and its files, and the archive of a directory."""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Union

from edge_retina.bundle.archive import write_archive
from edge_retina.bundle.loader import load_bundle
from edge_retina.bundle.manifest import Manifest
from edge_retina.bundle.paths import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    parent_conflicts,
    relpath_problem,
)
from edge_retina.errors import BundleError
from edge_retina.files import copy_and_hash, write_atomically

FileSource = Union[os.PathLike, bytes, bytearray, memoryview]


def write_bundle(
    out_dir: str | os.PathLike[str],
    manifest: Manifest | Mapping[str, Any],
    files: Mapping[str, FileSource],
) -> Path:
    """Write a bundle directory: every file of ``files`` (relative path -> a Path to copy, or bytes),
    then manifest.json with ``files`` filled in with their sha256s.

    The manifest (a Manifest or its dict form) is validated against the file names before anything
    is written; any ``files`` table it already has is replaced. ``out_dir`` must be absent or empty.
    manifest.json is written last and atomically, so a directory without it is an unfinished bundle.
    On failure, everything written is removed again.
    """
    out_dir = Path(out_dir)
    _check_sources(out_dir, files)
    draft = manifest.to_dict() if isinstance(manifest, Manifest) else manifest
    checked = Manifest.from_draft(draft, list(files), source=f"the manifest for {out_dir}")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise BundleError(f"{out_dir} already exists and is not an empty directory; remove it or choose another")

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        hashes = {rel: _write_file(out_dir / rel, files[rel]) for rel in sorted(files)}
        write_atomically(out_dir / MANIFEST_NAME, checked.with_files(hashes).canonical_bytes())
    except BaseException:
        _remove_written(out_dir, created)
        raise
    return out_dir


def pack_bundle(bundle_dir: str | os.PathLike[str], archive_path: str | os.PathLike[str]) -> Path:
    """Pack a verified bundle directory into a deterministic ``.erb.tar`` archive.

    Members: manifest.json first (a streaming reader meets it before the files it pins), then its
    signature manifest.sig when the directory has one, then every file the manifest lists, sorted;
    files the manifest does not list are left out.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir} is not a bundle directory (pack_bundle packs directories)")
    bundle = load_bundle(bundle_dir, verify=True)
    signature = [SIGNATURE_NAME] if (bundle_dir / SIGNATURE_NAME).is_file() else []
    return write_archive(bundle_dir, [MANIFEST_NAME, *signature, *sorted(bundle.manifest.files)], Path(archive_path))


def _check_sources(out_dir: Path, files: Mapping[str, FileSource]) -> None:
    problems = []
    for rel, content in files.items():
        if rel == MANIFEST_NAME:
            problems.append(f"{rel}: write_bundle writes manifest.json itself")
        elif rel == SIGNATURE_NAME:
            problems.append(f"{rel}: the signature is added after writing (edge_retina.bundle.signing)")
        elif problem := relpath_problem(rel):
            problems.append(f"file path {problem}")
        if isinstance(content, os.PathLike):
            if not Path(content).is_file():
                problems.append(f"{rel}: source {content} is not an existing file")
        elif not isinstance(content, (bytes, bytearray, memoryview)):
            # A str could mean a path or the content; refuse rather than guess.
            problems.append(f"{rel}: give a Path (a file to copy) or bytes, not {type(content).__name__}")
    for rel in parent_conflicts(list(files)):
        problems.append(f"{rel}: used both as a file and as a directory")
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise BundleError(f"cannot write bundle {out_dir}:\n{listing}")


def _write_file(destination: Path, content: FileSource) -> str:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, os.PathLike):
        with open(content, "rb") as source:
            return copy_and_hash(source, destination)
    return copy_and_hash(io.BytesIO(content), destination)


def _remove_written(out_dir: Path, created: bool) -> None:
    if created:
        shutil.rmtree(out_dir, ignore_errors=True)
        return
    for child in out_dir.iterdir():  # the directory was empty before: everything in it is ours
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
