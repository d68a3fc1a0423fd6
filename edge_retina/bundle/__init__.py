"""Bundles: the artefact a converter produces and a device loads (format: docs/BUNDLE_FORMAT.md).

A bundle is a directory, or the same content as one ``.erb.tar`` archive, holding manifest.json,
the engines, the prompt table and any extra files, each pinned in the manifest by its sha256.
"""
from edge_retina.bundle.archive import ARCHIVE_SUFFIX
from edge_retina.bundle.cache import default_cache_dir
from edge_retina.bundle.loader import (
    Bundle,
    VerificationReport,
    examine_bundle,
    load_bundle,
    verify_bundle,
)
from edge_retina.bundle.manifest import (
    SCHEMA_VERSION,
    AdaptationEntry,
    AdaptedCondition,
    CalibrationInfo,
    ConditionEntry,
    EngineEntry,
    Manifest,
    ManifestError,
    ModelInfo,
    PromptsEntry,
    Provenance,
    StudentInfo,
)
from edge_retina.bundle.paths import MANIFEST_NAME
from edge_retina.bundle.writer import pack_bundle, write_bundle

__all__ = [
    "ARCHIVE_SUFFIX",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "AdaptationEntry",
    "AdaptedCondition",
    "Bundle",
    "CalibrationInfo",
    "ConditionEntry",
    "EngineEntry",
    "Manifest",
    "ManifestError",
    "ModelInfo",
    "PromptsEntry",
    "Provenance",
    "StudentInfo",
    "VerificationReport",
    "default_cache_dir",
    "examine_bundle",
    "load_bundle",
    "pack_bundle",
    "verify_bundle",
    "write_bundle",
]
