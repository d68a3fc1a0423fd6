"""The adaptation overlay of a bundle: how it is read (screening) and written (adapting, removing).

An adapted bundle is the base bundle's files unchanged, plus ``adaptation/head.npz`` (the adapted
class embeddings and logit biases) and the manifest's ``adaptation`` section (docs/BUNDLE_FORMAT.md,
"Site adaptation"). Writing always starts from the base: adapting an adapted bundle replaces its
overlay, and removing it gives back the base manifest byte for byte. The input bundle is only read.
"""
from __future__ import annotations

import dataclasses
import io
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edge_retina.bundle import ARCHIVE_SUFFIX, Bundle, load_bundle, pack_bundle, write_bundle
from edge_retina.bundle.manifest import ADAPTATION_SCHEMA_VERSION, AdaptationEntry, AdaptedCondition, Manifest
from edge_retina.errors import BundleError
from edge_retina.out_paths import unwritable_reason
from edge_retina.prompt_table import PromptTable

HEAD_FILE = "adaptation/head.npz"


def bundle_scoring(bundle: Bundle, *, adapted: bool = True) -> tuple[PromptTable, dict[str, float | None]]:
    """The prompt table and referral thresholds screening uses: with the site adaptation when the
    bundle has one (and ``adapted``), else the zero-shot table and the bundle's thresholds."""
    manifest = bundle.manifest
    prompts = manifest.prompts
    table = PromptTable.load(bundle.path_of(prompts.file), classes=[c.name for c in prompts.conditions],
                             normal_class=prompts.normal_class, ensembling=prompts.ensembling,
                             logit_scale=manifest.logit_scale)
    if manifest.adaptation is None or not adapted:
        return table, {c.name: c.threshold for c in prompts.conditions}
    path = bundle.path_of(manifest.adaptation.file)
    try:
        with np.load(path, allow_pickle=False) as data:
            embeddings, bias = data["class_embeddings"], data["class_bias"]
    except (OSError, ValueError, KeyError) as exc:
        raise BundleError(f"adaptation head {path}: unreadable ({exc})") from exc
    return table.with_head(embeddings, bias), manifest.referral_thresholds


def head_bytes(class_embeddings: np.ndarray, class_bias: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, class_embeddings=np.asarray(class_embeddings, np.float32),
             class_bias=np.asarray(class_bias, np.float32))
    return buffer.getvalue()


#: Names of archives that are not a bundle archive: any --out but <something>.erb.tar is written as a
#: folder, and a folder called adapted.zip is not what was asked for.
_OTHER_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst", ".7z", ".rar")


def check_output(source: Path, out: Path) -> None:
    """Refuse an output that is the input bundle or would overwrite anything, or named as an archive
    that is not a bundle archive (before any work is done)."""
    archive = out.name.endswith(ARCHIVE_SUFFIX) and out.name != ARCHIVE_SUFFIX
    if not archive and out.name.lower().endswith((*_OTHER_ARCHIVE_SUFFIXES, ARCHIVE_SUFFIX)):
        raise BundleError(f"{out}: a bundle archive must be named <something>{ARCHIVE_SUFFIX}; any other --out is "
                          "written as a new folder")
    if out.exists() and out.resolve() == Path(source).resolve():
        raise BundleError(f"--out {out} is the input bundle; adapting never modifies its input: choose a new path")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} already exists; remove it or choose another")
    reason = unwritable_reason(out, folder=not archive)
    if reason:
        raise BundleError(f"cannot write the bundle to {out}: {reason}")


def write_overlay(base: Bundle, out: Path, adaptation: AdaptationEntry | None, head: bytes | None = None) -> Path:
    """Write ``base`` with ``adaptation`` (and its head file) in place of any overlay it has, or
    without one (``adaptation`` None), to ``out``: a new directory, or an archive when ``out`` ends
    in .erb.tar. Any signature of ``base`` is not carried over (it signed another manifest)."""
    out = Path(out)
    check_output(base.source, out)
    manifest = base.manifest
    old = manifest.adaptation.file if manifest.adaptation is not None else None
    files: dict[str, Any] = {rel: base.path_of(rel) for rel in manifest.files if rel != old}
    if adaptation is not None:
        if head is None:
            raise ValueError("an adaptation needs its head file")
        files[adaptation.file] = head
    if adaptation is None:  # back to the base's own version (byte-for-byte the base manifest)
        draft = dataclasses.replace(manifest, adaptation=None, schema_version=_base_schema_version(manifest))
    else:
        adaptation = dataclasses.replace(adaptation, provenance={
            **adaptation.provenance, "base_schema_version": _base_schema_version(manifest)})
        draft = dataclasses.replace(manifest, adaptation=adaptation, schema_version=ADAPTATION_SCHEMA_VERSION)
    if not out.name.endswith(ARCHIVE_SUFFIX):
        return write_bundle(out, draft, files)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".adapt-", dir=out.parent) as work:
        directory = write_bundle(Path(work) / "bundle", draft, files)
        return pack_bundle(directory, out)


def _base_schema_version(manifest: Manifest) -> int:
    if manifest.adaptation is None:
        return manifest.schema_version
    version = manifest.adaptation.provenance.get("base_schema_version")
    return version if isinstance(version, int) else manifest.schema_version


def remove_adaptation(bundle_path: str | Path, out: str | Path) -> Path:
    """Write the bundle at ``bundle_path`` without its site adaptation to ``out``."""
    base = load_bundle(Path(bundle_path))
    if base.manifest.adaptation is None:
        raise BundleError(f"{bundle_path} has no site adaptation to remove")
    return write_overlay(base, Path(out), None)


#: Evidence first, free text last: on 80 columns the note wraps or moves to --json, with the
#: threshold's source (site or bundle: a note says why the bundle's was kept).
SUMMARY_HEADERS = ["condition", "pos/neg", "head", "threshold [95 % CI]", "bundle", "note"]


def adaptation_summary(conditions: Mapping[str, AdaptedCondition]) -> list[list[str]]:
    """Rows of SUMMARY_HEADERS for people (``adapt`` and ``bundle inspect``)."""
    rows = []
    for name, c in conditions.items():
        report = c.report
        ci = report.get("threshold_ci95")
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, list) and len(ci) == 2 else ""
        base = report.get("bundle_threshold", c.threshold)
        rows.append([name, f"{report.get('n_pos')}/{report.get('n_neg')}", c.head, f"{c.threshold:.3f}{interval}",
                     f"{base:.3f}" if isinstance(base, (int, float)) else "-", str(report.get("note", ""))])
    return rows
