"""The rules for paths inside a bundle, shared by the manifest, the writer, the archive and the loader.

A bundle travels between Linux hosts, Windows workstations and device filesystems (often FAT on an SD
card), so a bundle-relative path is restricted to the POSIX portable filename characters in
'/'-separated components: no absolute paths, no '.' or '..' components, no backslashes, nothing a
filesystem could read differently.
"""
from __future__ import annotations

import re

MANIFEST_NAME = "manifest.json"
# The detached Ed25519 signature of manifest.json (edge_retina.bundle.signing); like the manifest it
# sits at the bundle root and is not listed in the manifest (it cannot pin its own signature).
SIGNATURE_NAME = "manifest.sig"
# manifest.json and manifest.sig are small; a bound stops a hostile archive from filling memory.
MAX_MANIFEST_BYTES = 16 << 20
MAX_SIGNATURE_BYTES = 4096

# POSIX "portable filename character set" (IEEE Std 1003.1, 3.282); a component may not start with
# '-' (it would read as an option on a device shell) nor be '.' or '..'.
_COMPONENT = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]*")
MAX_PATH_LENGTH = 240  # below Windows' MAX_PATH (260) once a short extraction root is prefixed


def relpath_problem(path: object) -> str | None:
    """Why ``path`` is not an acceptable bundle-relative file path, or None when it is."""
    if not isinstance(path, str):
        return f"must be a string, got {type(path).__name__}"
    if not path:
        return "must not be empty"
    if len(path) > MAX_PATH_LENGTH:
        return f"is longer than {MAX_PATH_LENGTH} characters"
    if path.startswith("/") or "\\" in path or ":" in path:
        return f"{path!r} must be a relative POSIX path (no leading '/', backslash or drive letter)"
    for component in path.split("/"):
        if component in ("", ".", ".."):
            return f"{path!r} must not contain empty, '.' or '..' components"
        if not _COMPONENT.fullmatch(component):
            return (
                f"{path!r}: component {component!r} may only use A-Z a-z 0-9 . _ - "
                "and must not start with '-'"
            )
    return None


def parent_conflicts(paths: list[str] | set[str]) -> list[str]:
    """Paths that are also used as a directory by another path ("a" and "a/b" cannot both be files)."""
    listed = set(paths)
    conflicts = set()
    for path in listed:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix in listed:
                conflicts.add(prefix)
    return sorted(conflicts)
