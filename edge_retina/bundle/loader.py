"""Opening a bundle (directory or ``.erb.tar`` archive) and checking it against its manifest."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from edge_retina.bundle.archive import hash_archive, unlisted_members_problem
from edge_retina.bundle.cache import default_cache_dir, extracted
from edge_retina.bundle.manifest import EngineEntry, Manifest, ManifestError
from edge_retina.bundle.paths import MANIFEST_NAME, SIGNATURE_NAME, relpath_problem
from edge_retina.errors import BundleError
from edge_retina.files import sha256_file
from edge_retina.user_caches import discard

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerificationReport:
    """``ok`` is False when any ``problems`` (which refuse loading); ``warnings`` do not refuse
    (files of a directory that the manifest does not list and that are never used or installed, a
    manifest not in canonical form). An archive's unlisted members are problems: they are refused.
    ``checked`` maps every file whose sha256 matched to that sha256. ``signed``: it carries a
    manifest.sig (whether that matches is only known with the public key: check_signature)."""

    ok: bool
    problems: list[str]
    checked: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    signed: bool = False


@dataclass(frozen=True)
class Bundle:
    root: Path        # the directory holding manifest.json (an extraction in the cache for an archive)
    manifest: Manifest
    source: Path      # what was loaded: the directory itself or the archive

    def path_of(self, relpath: str) -> Path:
        """The file ``relpath`` of this bundle; BundleError for any path that leads outside it."""
        problem = relpath_problem(relpath)
        if problem:
            raise BundleError(f"bundle path {problem}")
        root = self.root.resolve()
        path = (root / relpath).resolve()
        if not path.is_relative_to(root):
            raise BundleError(f"bundle path {relpath!r} resolves outside the bundle (to {path})")
        return path

    def select_engine(
        self, backend: str | None = None, precision: str | None = None, role: str | None = None
    ) -> EngineEntry:
        """See Manifest.select_engine for the preference order."""
        return self.manifest.select_engine(backend=backend, precision=precision, role=role)


def load_bundle(
    path: str | os.PathLike[str], *, verify: bool = True, cache_dir: str | os.PathLike[str] | None = None
) -> Bundle:
    """Open a bundle directory or archive, refusing it (BundleError) if it does not match its manifest.

    ``verify`` hashes every listed file (streamed); without it only their presence is checked.
    Archives are extracted once into ``cache_dir`` (default: default_cache_dir()), keyed by sha256.
    """
    source = Path(path)
    if source.is_dir():
        return _open_directory(source, source, verify)
    if not source.exists():
        raise BundleError(f"no bundle at {source}")
    if not source.is_file():
        raise BundleError(f"{source} is neither a bundle directory nor a bundle archive")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    archive_sha256 = sha256_file(source)
    root, fresh = extracted(source, archive_sha256, cache)
    try:
        return _open_directory(root, source, verify)
    except BundleError:
        if fresh:  # the archive itself is bad: keep none of it
            discard(root)
            raise
    # The cached extraction no longer matches (damaged or edited on disk); the archive is the truth.
    discard(root)
    root, _ = extracted(source, archive_sha256, cache)
    return _open_directory(root, source, verify)


def load_copy(copy: str | os.PathLike[str], source: str | os.PathLike[str]) -> Bundle:
    """The bundle directory ``copy`` made of the bundle (directory or archive) at ``source``, verified
    like ``load_bundle``'s; messages name ``source``, the bundle the user gave (an install checks
    its staging copy, so what is checked is what is installed)."""
    return _open_directory(Path(copy), Path(source), verify=True)


def verify_bundle(path: str | os.PathLike[str]) -> VerificationReport:
    """Check a bundle directory or archive completely; reports problems instead of raising.

    An archive is checked by streaming its members, without extracting anything.
    """
    try:
        return examine_bundle(path)[1]
    except ManifestError as exc:
        return VerificationReport(ok=False, problems=[f"{MANIFEST_NAME}: {p}" for p in exc.problems], checked={})
    except BundleError as exc:
        return VerificationReport(ok=False, problems=[str(exc)], checked={})


def examine_bundle(path: str | os.PathLike[str]) -> tuple[Manifest, VerificationReport]:
    """A bundle's manifest and what is wrong with its files (as ``verify_bundle``), for showing a
    damaged bundle: only a manifest that cannot be read or is not valid raises (BundleError,
    ManifestError), as then there is nothing to show. An archive is streamed, not extracted; one
    damaged part way (truncated in transfer) is reported with what was read before the damage."""
    source = Path(path)
    problems: list[str] = []
    unreadable: dict[str, str] = {}
    unlisted: list[str] = []
    if source.is_dir():
        manifest_bytes = _read_manifest_bytes(source, source)
        manifest = Manifest.from_bytes(manifest_bytes, source=_describe(source, source))
        actual, unreadable = _hash_directory(source, manifest.files)
        unlisted = _unlisted_files(source, manifest.files)
        expected = manifest.files
    elif source.is_file():
        manifest_bytes, actual, stopped = hash_archive(source)
        if manifest_bytes is None:
            raise BundleError(stopped or f"{source} is not a bundle: the archive has no {MANIFEST_NAME}")
        manifest = Manifest.from_bytes(manifest_bytes, source=_describe(source, source))
        unlisted_problem = unlisted_members_problem(
            source, sorted(set(actual) - set(manifest.files) - {SIGNATURE_NAME}))
        problems += [p for p in (stopped, unlisted_problem) if p]
        # Past the damage nothing was read: those files are neither checked nor reported one by one.
        expected = {rel: sha for rel, sha in manifest.files.items() if stopped is None or rel in actual}
    else:
        raise BundleError(f"no bundle at {source}")

    file_problems, checked = _compare(expected, actual, unreadable)
    problems += file_problems
    warnings = [f"{rel}: not listed in {MANIFEST_NAME} (ignored)" for rel in unlisted]
    signed = (source / SIGNATURE_NAME).is_file() if source.is_dir() else SIGNATURE_NAME in actual
    form_warning = _manifest_form_warning(manifest_bytes, manifest, signed)
    if form_warning:
        warnings.append(form_warning)
    report = VerificationReport(ok=not problems, problems=problems, checked=checked, warnings=warnings,
                                signed=signed)
    return manifest, report


def _manifest_form_warning(manifest_bytes: bytes, manifest: Manifest, signed: bool) -> str | None:
    """What a manifest not in canonical form means. Only canonical manifests are signed
    (signing.sign_manifest), so a signed one that is not canonical was changed after signing:
    detectable without the public key, unlike an edit that keeps the canonical form."""
    if manifest_bytes == manifest.canonical_bytes():
        return None
    if signed:
        return (f"{MANIFEST_NAME} was changed after the bundle was signed (it is not in the canonical form "
                "signing requires): its signature cannot match; rebuild the bundle and sign it again")
    return (f"{MANIFEST_NAME} is not in canonical form (sorted keys, fixed layout; edited by hand?) and cannot be "
            "signed as is: rebuild the bundle with the command that made it (`edge-retina convert`, "
            "`adapt` or `prompts build`)")


def _open_directory(root: Path, source: Path, verify: bool) -> Bundle:
    manifest_bytes = _read_manifest_bytes(root, source)
    manifest = Manifest.from_bytes(manifest_bytes, source=_describe(root, source))
    if (root / SIGNATURE_NAME).is_file():  # an unsigned manifest's form does not matter to a screener
        tampered = _manifest_form_warning(manifest_bytes, manifest, signed=True)
        if tampered:
            logger.warning("%s: %s", source, tampered)
    if verify:
        actual, unreadable = _hash_directory(root, manifest.files)
        problems, _ = _compare(manifest.files, actual, unreadable)
    else:
        problems = [f"{rel}: {why}" for rel, why in _locate(root, manifest.files)[1].items()]
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise BundleError(f"bundle {source} failed verification:\n{listing}")
    return Bundle(root=root, manifest=manifest, source=source)


def _read_manifest_bytes(root: Path, source: Path) -> bytes:
    try:
        return (root / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{source} is not a bundle: it has no {MANIFEST_NAME}") from None
    except OSError as exc:
        raise BundleError(f"{_describe(root, source)}: cannot read ({exc.strerror or exc})") from None


def _describe(root: Path, source: Path) -> str:
    """How to name the manifest in messages: inside the directory, or inside the archive."""
    return str(source / MANIFEST_NAME) if root == source or source.is_dir() else f"{source}:{MANIFEST_NAME}"


def _locate(root: Path, files: Mapping[str, str]) -> tuple[dict[str, Path], dict[str, str]]:
    """Split listed files into ({rel: path} present as regular files inside root, {rel: why not})."""
    resolved_root = root.resolve()
    found: dict[str, Path] = {}
    unusable: dict[str, str] = {}
    for rel in sorted(files):
        try:
            path = (root / rel).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop (RuntimeError before 3.13)
            unusable[rel] = "file is missing"
            continue
        if not path.is_relative_to(resolved_root):
            unusable[rel] = f"resolves outside the bundle (to {path})"
        elif not path.is_file():
            unusable[rel] = "is not a regular file"
        else:
            found[rel] = path
    return found, unusable


def _hash_directory(root: Path, files: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    found, unusable = _locate(root, files)
    return {rel: sha256_file(path) for rel, path in found.items()}, unusable


def _compare(
    expected: Mapping[str, str], actual: Mapping[str, str], unusable: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    problems: list[str] = []
    checked: dict[str, str] = {}
    for rel, want in sorted(expected.items()):
        if rel in unusable:
            problems.append(f"{rel}: {unusable[rel]}")
        elif rel not in actual:
            problems.append(f"{rel}: file is missing")
        elif actual[rel] != want:
            problems.append(f"{rel}: expected sha256 {want}, got {actual[rel]}")
        else:
            checked[rel] = want
    return problems, checked


def _unlisted_files(root: Path, files: Mapping[str, str]) -> list[str]:
    unlisted = []
    for directory, _, names in os.walk(root):
        for name in names:
            rel = (Path(directory) / name).relative_to(root).as_posix()
            if rel not in (MANIFEST_NAME, SIGNATURE_NAME) and rel not in files:
                unlisted.append(rel)
    return sorted(unlisted)
