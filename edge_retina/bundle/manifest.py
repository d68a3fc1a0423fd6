"""The bundle manifest (schema_version 1; 2 adds a site adaptation): typed view, validation and
canonical serialisation.

``docs/BUNDLE_FORMAT.md`` is the specification; this module is its one implementation. Validation
works on the JSON-shaped dict and collects every problem (each naming its field, e.g.
``engines[1].precision``) before refusing, so a broken manifest is fixed in one round trip. The typed
dataclasses are plain views: build them in code, and ``write_bundle`` validates them through the
same dict path.
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import sys
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection, Mapping

from edge_retina import __version__
from edge_retina.bundle.paths import MANIFEST_NAME, parent_conflicts, relpath_problem
from edge_retina.engines import BACKENDS, PRECISIONS, ROLES, preferred_engine
from edge_retina.errors import BundleError
from edge_retina.preprocess.spec import InputSpec
from edge_retina.prompts import ENSEMBLING_RULES as ENSEMBLING

SCHEMA_VERSION = 1
# Version 2 is version 1 plus the optional ``adaptation`` section; only manifests that carry one
# declare it, so a reader that predates site adaptation refuses exactly the bundles it would misread.
ADAPTATION_SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (1, ADAPTATION_SCHEMA_VERSION)

PROMPTS_FILE = "prompts.npz"
TOOL_NAME = "edge-retina"
CREATED_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONDITION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ManifestError(BundleError):
    """A manifest that does not follow the schema; ``problems`` lists every violation found."""

    def __init__(self, source: str, problems: list[str]):
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} is not a valid bundle manifest:\n{listing}")
        self.problems = list(problems)


@dataclass(frozen=True)
class StudentInfo:
    name: str
    arch: str
    checkpoint_sha256: str
    # How well the student keeps its teacher's skill on held-out labelled images (per condition:
    # AUROCs, retention, agreement; embedding cosine; parameters, FLOPs, latency), as measured when
    # the bundle was built. Free-form JSON, written by the host's distillation report.
    distillation: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelInfo:
    family: str
    name: str
    teacher_checkpoint_sha256: str
    embedding_dim: int
    student: StudentInfo | None = None


@dataclass(frozen=True)
class CalibrationInfo:
    """The post-training-quantization calibration set an int8 engine was built from."""

    manifest_sha256: str
    size: int
    method: str


@dataclass(frozen=True)
class EngineEntry:
    """One compiled model. ``files[0]`` is the file to load (an OpenVINO IR is .xml then .bin)."""

    backend: str
    precision: str
    role: str
    files: tuple[str, ...]
    device_profile: str | None = None
    toolchain: Mapping[str, str] = field(default_factory=dict)
    calibration: CalibrationInfo | None = None
    notes: Mapping[str, Any] = field(default_factory=dict)
    fallback: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(self.files))

    @property
    def primary_file(self) -> str:
        return self.files[0]

    def describe(self) -> str:
        profile = f"@{self.device_profile}" if self.device_profile else ""
        return f"{self.backend}/{self.precision}/{self.role}{profile}"


@dataclass(frozen=True)
class ConditionEntry:
    """A class of the zero-shot prompt table.

    ``threshold`` is the referral threshold on the condition-vs-normal probability; the normal class
    is never referred, so its threshold may be None.
    """

    name: str
    label: str
    prompts: tuple[str, ...]
    threshold: float | None
    threshold_source: str = "default"

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", tuple(self.prompts))


@dataclass(frozen=True)
class PromptsEntry:
    """The manifest's ``prompts`` entry; the embeddings themselves are ``edge_retina.prompts.PromptTable``."""

    conditions: tuple[ConditionEntry, ...]
    normal_class: str
    ensembling: str = "mean_renormalised"
    file: str = PROMPTS_FILE

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(self.conditions))

    @property
    def referable(self) -> tuple[ConditionEntry, ...]:
        """The conditions that can lead to a referral: every one but the normal class."""
        return tuple(c for c in self.conditions if c.name != self.normal_class)


@dataclass(frozen=True)
class AdaptedCondition:
    """One condition of a site adaptation: the head its scores come from and its referral threshold.

    ``head`` is "zero-shot" (the prompt table's class embedding) or the name of a few-shot head
    (``edge_retina.adapt.heads``); ``threshold_source`` is "site" (recalibrated on the site's photos)
    or "bundle" (too few positives: the bundle's own). ``report`` (free-form JSON) holds the counts,
    the bootstrap CI and the cross-validation that chose the head.
    """

    head: str
    threshold: float
    threshold_source: str
    report: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AdaptationEntry:
    """The manifest's optional ``adaptation`` section: an overlay on the zero-shot prompt table.

    ``file`` holds the adapted class embeddings and logit biases; the prompt table and the
    conditions' own thresholds stay as the converter wrote them (the zero-shot baseline), so removing
    the section restores the bundle exactly. ``provenance`` (free-form JSON): labels file hash,
    engine, date, counts.
    """

    file: str
    method: str
    target_sensitivity: float
    conditions: Mapping[str, AdaptedCondition]
    provenance: Mapping[str, Any] = field(default_factory=dict)


ADAPTATION_THRESHOLD_SOURCES = ("site", "bundle")


@dataclass(frozen=True)
class Provenance:
    tool: str
    tool_version: str
    created: str
    command: str
    host: str | None = None

    @classmethod
    def for_this_run(cls, command: str | None = None, host: str | None = None) -> "Provenance":
        """Provenance of a bundle made now by this process (argv as the command by default)."""
        return cls(
            tool=TOOL_NAME,
            tool_version=__version__,
            created=datetime.now(timezone.utc).strftime(CREATED_FORMAT),
            command=shlex.join(sys.argv) if command is None else command,
            host=host,
        )


@dataclass(frozen=True)
class Manifest:
    model: ModelInfo
    input: InputSpec
    engines: tuple[EngineEntry, ...]
    prompts: PromptsEntry
    logit_scale: float
    provenance: Provenance
    files: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    adaptation: AdaptationEntry | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "engines", tuple(self.engines))

    @property
    def referral_thresholds(self) -> dict[str, float | None]:
        """The threshold in force per class: the site adaptation's where it has one, else the bundle's."""
        adapted = self.adaptation.conditions if self.adaptation is not None else {}
        return {c.name: adapted[c.name].threshold if c.name in adapted else c.threshold
                for c in self.prompts.conditions}

    # -- reading ---------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = MANIFEST_NAME) -> "Manifest":
        """Validate a manifest dict completely; raises ManifestError listing every problem."""
        return _parse(d, source=source, pending_files=None)

    @classmethod
    def from_draft(cls, d: Mapping[str, Any], file_names: Collection[str], *, source: str) -> "Manifest":
        """Validate a manifest whose ``files`` table is still to be computed (by write_bundle).

        Its own ``files`` is ignored; engine and prompt files are checked against ``file_names``.
        The result has an empty ``files`` table.
        """
        return _parse(d, source=source, pending_files=file_names)

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = MANIFEST_NAME) -> "Manifest":
        return cls.from_dict(_load_json(data, source), source=source)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> "Manifest":
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BundleError(f"{path}: no such manifest file") from None
        except OSError as exc:
            raise BundleError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
        return cls.from_bytes(data, source=str(path))

    # -- writing ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON form; every optional field is present (null or {}) so the bytes are stable."""
        m = self.model
        return {
            "schema_version": self.schema_version,
            "model": {
                "family": m.family,
                "name": m.name,
                "teacher_checkpoint_sha256": m.teacher_checkpoint_sha256,
                "student": None if m.student is None else {
                    "name": m.student.name,
                    "arch": m.student.arch,
                    "checkpoint_sha256": m.student.checkpoint_sha256,
                    "distillation": dict(m.student.distillation),
                },
                "embedding_dim": m.embedding_dim,
            },
            "input": self.input.to_dict(),
            "engines": [engine_to_dict(e) for e in self.engines],
            "prompts": {
                "file": self.prompts.file,
                "ensembling": self.prompts.ensembling,
                "normal_class": self.prompts.normal_class,
                "conditions": [
                    {
                        "name": c.name,
                        "label": c.label,
                        "prompts": list(c.prompts),
                        "threshold": c.threshold,
                        "threshold_source": c.threshold_source,
                    }
                    for c in self.prompts.conditions
                ],
            },
            "logit_scale": self.logit_scale,
            "provenance": {
                "tool": self.provenance.tool,
                "tool_version": self.provenance.tool_version,
                "created": self.provenance.created,
                "command": self.provenance.command,
                "host": self.provenance.host,
            },
            "files": dict(self.files),
            # Only when present: manifests without an adaptation keep the exact bytes (and signatures)
            # they were written with.
            **({} if self.adaptation is None else {"adaptation": _adaptation_to_dict(self.adaptation)}),
        }

    def canonical_bytes(self) -> bytes:
        """The exact bytes of manifest.json (what a signature covers); see canonical_json()."""
        return canonical_json(self.to_dict())

    def with_files(self, files: Mapping[str, str]) -> "Manifest":
        return replace(self, files=dict(files))

    # -- using -----------------------------------------------------------------------------------
    def select_engine(
        self, backend: str | None = None, precision: str | None = None, role: str | None = None
    ) -> EngineEntry:
        """The preferred engine among those matching every given criterion (``engines.preferred_engine``)."""
        return preferred_engine(self.engines, backend, precision, role)


def canonical_json(d: Mapping[str, Any]) -> bytes:
    """Canonical manifest serialisation: UTF-8 JSON, keys sorted at every level, two-space indent,
    ', '/': ' separators, no NaN/Infinity, one trailing newline.

    Indented rather than compact so a manifest stays readable on a device console; either is
    canonical as long as it is fixed. Floats use Python's shortest round-trip repr.
    """
    text = json.dumps(d, sort_keys=True, indent=2, separators=(",", ": "), ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def engine_to_dict(e: EngineEntry) -> dict[str, Any]:
    """One ``engines`` entry as the manifest writes it (the converter's step cache keeps it so too)."""
    return {
        "backend": e.backend,
        "precision": e.precision,
        "role": e.role,
        "files": list(e.files),
        "device_profile": e.device_profile,
        "toolchain": dict(e.toolchain),
        "calibration": None if e.calibration is None else {
            "manifest_sha256": e.calibration.manifest_sha256,
            "size": e.calibration.size,
            "method": e.calibration.method,
        },
        "notes": dict(e.notes),
        "fallback": None if e.fallback is None else dict(e.fallback),
    }


def _adaptation_to_dict(a: AdaptationEntry) -> dict[str, Any]:
    return {
        "file": a.file,
        "method": a.method,
        "target_sensitivity": a.target_sensitivity,
        "conditions": {
            name: {"head": c.head, "threshold": c.threshold, "threshold_source": c.threshold_source,
                   "report": dict(c.report)}
            for name, c in a.conditions.items()
        },
        "provenance": dict(a.provenance),
    }


def engine_from_dict(d: Any, source: str) -> EngineEntry:
    """One ``engines`` entry, checked as the manifest checks it; ``ManifestError`` lists what is wrong."""
    check = _Checker()
    engines = _parse_engines(check, [d])
    if check.problems or not engines:
        raise ManifestError(source, check.problems)
    return engines[0]


def _load_json(data: bytes, source: str) -> Any:
    def refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # json.loads keeps the last of duplicate keys silently; a signed manifest must mean one thing.
        keys = [k for k, _ in pairs]
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        if duplicated:
            raise ManifestError(source, [f"duplicate key(s) {duplicated} in one JSON object"])
        return dict(pairs)

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(source, [f"not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    try:
        return json.loads(text, object_pairs_hook=refuse_duplicates)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise ManifestError(source, [f"malformed JSON: {exc.msg} at {where}"]) from None


# --------------------------------------------------------------------------------------------------
# Validation: walk the dict, record "<field>: <what is wrong>" for every violation, build the
# dataclasses only if none was found.

_MISSING = object()


class _Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def fields(
        self, value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
    ) -> Mapping[str, Any] | None:
        if not isinstance(value, Mapping):
            self.add(where, f"must be an object, got {_kind(value)}")
            return None
        for key in required:
            if key not in value:
                self.add(_at(where, key), "required field is missing")
        for key in sorted(set(value) - set(required) - set(optional)):
            self.add(_at(where, key), f"unknown field (schema_version {SCHEMA_VERSION} does not define it)")
        return value

    def text(self, value: Any, where: str, *, nullable: bool = False) -> Any:
        if value is _MISSING or (nullable and value is None):
            return value
        if not isinstance(value, str) or not value.strip():
            self.add(where, f"must be a non-empty string, got {_kind(value)}")
        return value

    def choice(self, value: Any, where: str, allowed: tuple[str, ...]) -> Any:
        if value is not _MISSING and value not in allowed:
            self.add(where, f"must be one of {', '.join(allowed)}; got {value!r}")
        return value

    def sha256(self, value: Any, where: str) -> Any:
        if value is not _MISSING and not (isinstance(value, str) and _SHA256.fullmatch(value)):
            self.add(where, f"must be a sha256 as 64 lowercase hex digits, got {_short(value)}")
        return value

    def integer(self, value: Any, where: str, *, minimum: int) -> Any:
        if value is _MISSING:
            return value
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            self.add(where, f"must be an integer >= {minimum}, got {_short(value)}")
        return value

    def number(self, value: Any, where: str, *, low: float, high: float, low_inclusive: bool = True) -> Any:
        if value is _MISSING:
            return value
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            self.add(where, f"must be a finite number, got {_kind(value)}")
            return value
        if value < low or (value == low and not low_inclusive) or value > high:
            if math.isinf(high):
                self.add(where, f"must be {'>=' if low_inclusive else '>'} {low:g}, got {value!r}")
            else:
                self.add(where, f"must be in {'[' if low_inclusive else '('}{low:g}, {high:g}], got {value!r}")
        return float(value)

    def json_object(self, value: Any, where: str, *, nullable: bool) -> Any:
        if value is _MISSING or (nullable and value is None):
            return value
        if not isinstance(value, Mapping):
            self.add(where, f"must be an object{' or null' if nullable else ''}, got {_kind(value)}")
            return value
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            self.add(where, f"must hold only JSON values ({exc})")
        return value

    def string_list(self, value: Any, where: str) -> Any:
        if value is _MISSING:
            return value
        if not isinstance(value, list) or not value:
            self.add(where, f"must be a non-empty list of strings, got {_kind(value)}")
            return value
        for i, item in enumerate(value):
            self.text(item, f"{where}[{i}]")
        return value


def _at(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    if value is None:
        return "null"
    return f"{type(value).__name__} {_short(value)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse(d: Any, *, source: str, pending_files: Collection[str] | None) -> Manifest:
    """Validate and build. With ``pending_files`` (write_bundle), the manifest's own ``files`` is
    ignored and references are checked against the files about to be written."""
    check = _Checker()
    sections = ("schema_version", "model", "input", "engines", "prompts", "logit_scale", "provenance")
    if pending_files is None:
        top = check.fields(d, "", sections + ("files",), optional=("adaptation",))
    else:
        top = check.fields(d, "", sections, optional=("files", "adaptation"))
    if top is None:
        raise ManifestError(source, check.problems)

    version = top.get("schema_version", _MISSING)
    if version is not _MISSING and (
        not isinstance(version, int) or isinstance(version, bool) or version not in SUPPORTED_SCHEMA_VERSIONS
    ):
        # Refuse before anything else: fields of an unknown version would only produce noise.
        raise ManifestError(source, [
            f"schema_version: {_short(version)} is not supported; this edge-retina ({__version__}) reads "
            f"schema_version {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}. "
            "Upgrade edge-retina or rebuild the bundle with a matching converter."
        ])

    model = _parse_model(check, top.get("model", _MISSING))
    input_spec = _parse_input(check, top.get("input", _MISSING))
    engines = _parse_engines(check, top.get("engines", _MISSING))
    prompts = _parse_prompts(check, top.get("prompts", _MISSING))
    logit_scale = check.number(
        top.get("logit_scale", _MISSING), "logit_scale", low=0.0, high=math.inf, low_inclusive=False
    )
    provenance = _parse_provenance(check, top.get("provenance", _MISSING))
    adaptation = _parse_adaptation(check, top.get("adaptation"), prompts)
    if adaptation is not None and version != ADAPTATION_SCHEMA_VERSION:
        check.add("adaptation", f"a site adaptation needs schema_version {ADAPTATION_SCHEMA_VERSION}, got {version!r}")
    if pending_files is None:
        files = _parse_files(check, top.get("files", _MISSING))
        listed = set(files)
    else:
        files = {}
        listed = set(pending_files)

    if engines is not None:
        for i, e in enumerate(engines):
            for j, path in enumerate(e.files):
                if path not in listed:
                    check.add(f"engines[{i}].files[{j}]", f"{path!r} is not listed in files")
    if prompts is not None and prompts.file not in listed:
        check.add("prompts.file", f"{prompts.file!r} is not listed in files")
    if adaptation is not None and adaptation.file not in listed:
        check.add("adaptation.file", f"{adaptation.file!r} is not listed in files")

    if check.problems:
        raise ManifestError(source, check.problems)
    return Manifest(
        schema_version=version,
        model=model,
        input=input_spec,
        engines=engines,
        prompts=prompts,
        logit_scale=logit_scale,
        provenance=provenance,
        files=files,
        adaptation=adaptation,
    )


def _parse_model(check: _Checker, value: Any) -> ModelInfo | None:
    if value is _MISSING:
        return None
    d = check.fields(
        value, "model", ("family", "name", "teacher_checkpoint_sha256", "embedding_dim"), optional=("student",)
    )
    if d is None:
        return None
    student = None
    raw_student = d.get("student")
    if raw_student is not None:
        s = check.fields(raw_student, "model.student", ("name", "arch", "checkpoint_sha256"),
                         optional=("distillation",))
        if s is not None:
            student = StudentInfo(
                name=check.text(s.get("name", _MISSING), "model.student.name"),
                arch=check.text(s.get("arch", _MISSING), "model.student.arch"),
                checkpoint_sha256=check.sha256(
                    s.get("checkpoint_sha256", _MISSING), "model.student.checkpoint_sha256"
                ),
                distillation=check.json_object(s.get("distillation", {}), "model.student.distillation",
                                               nullable=False),
            )
    return ModelInfo(
        family=check.text(d.get("family", _MISSING), "model.family"),
        name=check.text(d.get("name", _MISSING), "model.name"),
        teacher_checkpoint_sha256=check.sha256(
            d.get("teacher_checkpoint_sha256", _MISSING), "model.teacher_checkpoint_sha256"
        ),
        embedding_dim=check.integer(d.get("embedding_dim", _MISSING), "model.embedding_dim", minimum=1),
        student=student,
    )


def _parse_input(check: _Checker, value: Any) -> InputSpec | None:
    if value is _MISSING:
        return None
    if not isinstance(value, Mapping):
        check.add("input", f"must be an object, got {_kind(value)}")
        return None
    try:
        return InputSpec.from_dict(dict(value))
    except (TypeError, ValueError) as exc:
        check.add("input", str(exc))
        return None


def _parse_engines(check: _Checker, value: Any) -> tuple[EngineEntry, ...] | None:
    if value is _MISSING:
        return None
    if not isinstance(value, list) or not value:
        check.add("engines", f"must be a non-empty list, got {_kind(value)}")
        return None
    engines = []
    for i, raw in enumerate(value):
        at = f"engines[{i}]"
        d = check.fields(
            raw, at, ("backend", "precision", "role", "files"),
            ("device_profile", "toolchain", "calibration", "notes", "fallback"),
        )
        if d is None:
            continue
        files = check.string_list(d.get("files", _MISSING), f"{at}.files")
        if isinstance(files, list):
            for j, path in enumerate(files):
                if isinstance(path, str) and (problem := relpath_problem(path)):
                    check.add(f"{at}.files[{j}]", problem)
            if len(set(map(str, files))) != len(files):
                check.add(f"{at}.files", "lists a file twice")
        backend = check.choice(d.get("backend", _MISSING), f"{at}.backend", BACKENDS)
        if backend == "openvino" and isinstance(files, list) and files and not str(files[0]).endswith(".xml"):
            check.add(f"{at}.files[0]", "an OpenVINO engine loads its .xml first (then the .bin)")
        toolchain = check.json_object(d.get("toolchain", {}), f"{at}.toolchain", nullable=False)
        if isinstance(toolchain, Mapping):
            for library, version in toolchain.items():
                check.text(version, f"{at}.toolchain.{library}")
        calibration = None
        raw_calibration = d.get("calibration")
        if raw_calibration is not None:
            c = check.fields(raw_calibration, f"{at}.calibration", ("manifest_sha256", "size", "method"))
            if c is not None:
                calibration = CalibrationInfo(
                    manifest_sha256=check.sha256(
                        c.get("manifest_sha256", _MISSING), f"{at}.calibration.manifest_sha256"
                    ),
                    size=check.integer(c.get("size", _MISSING), f"{at}.calibration.size", minimum=1),
                    method=check.text(c.get("method", _MISSING), f"{at}.calibration.method"),
                )
        engines.append(EngineEntry(
            backend=backend,
            precision=check.choice(d.get("precision", _MISSING), f"{at}.precision", PRECISIONS),
            role=check.choice(d.get("role", _MISSING), f"{at}.role", ROLES),
            files=files if isinstance(files, list) else (),
            device_profile=check.text(d.get("device_profile"), f"{at}.device_profile", nullable=True),
            toolchain=toolchain,
            calibration=calibration,
            notes=check.json_object(d.get("notes", {}), f"{at}.notes", nullable=False),
            fallback=check.json_object(d.get("fallback"), f"{at}.fallback", nullable=True),
        ))
    # Two engines select_engine cannot tell apart would make the choice depend on list order alone.
    seen: dict[str, int] = {}
    for i, e in enumerate(engines):
        key = repr((e.backend, e.precision, e.role, e.device_profile))  # repr: fields may be unhashable junk
        if key in seen:
            check.add(f"engines[{i}]", f"same backend/precision/role/device_profile as engines[{seen[key]}]")
        else:
            seen[key] = i
    return tuple(engines)


def _parse_prompts(check: _Checker, value: Any) -> PromptsEntry | None:
    if value is _MISSING:
        return None
    d = check.fields(value, "prompts", ("file", "ensembling", "conditions", "normal_class"))
    if d is None:
        return None
    file = check.text(d.get("file", _MISSING), "prompts.file")
    if isinstance(file, str) and (problem := relpath_problem(file)):
        check.add("prompts.file", problem)
    normal_class = check.text(d.get("normal_class", _MISSING), "prompts.normal_class")
    raw_conditions = d.get("conditions", _MISSING)
    conditions = []
    if raw_conditions is not _MISSING:
        if not isinstance(raw_conditions, list) or not raw_conditions:
            check.add("prompts.conditions", f"must be a non-empty list, got {_kind(raw_conditions)}")
            raw_conditions = []
        for i, raw in enumerate(raw_conditions):
            at = f"prompts.conditions[{i}]"
            c = check.fields(raw, at, ("name", "label", "prompts", "threshold", "threshold_source"))
            if c is None:
                continue
            name = check.text(c.get("name", _MISSING), f"{at}.name")
            if isinstance(name, str) and not _CONDITION_NAME.fullmatch(name):
                check.add(f"{at}.name", f"{name!r} may only use A-Z a-z 0-9 _ . - (it becomes a CSV column)")
            threshold = c.get("threshold", _MISSING)
            if not (threshold is None and name == normal_class):
                threshold = check.number(threshold, f"{at}.threshold", low=0.0, high=1.0)
            prompts = check.string_list(c.get("prompts", _MISSING), f"{at}.prompts")
            conditions.append(ConditionEntry(
                name=name,
                label=check.text(c.get("label", _MISSING), f"{at}.label"),
                prompts=prompts if isinstance(prompts, list) else (),
                threshold=threshold,
                threshold_source=check.text(c.get("threshold_source", _MISSING), f"{at}.threshold_source"),
            ))
        names = [c.name for c in conditions]
        for name in sorted({n for n in names if isinstance(n, str) and names.count(n) > 1}):
            check.add("prompts.conditions", f"condition name {name!r} is used more than once")
        if isinstance(normal_class, str) and raw_conditions:
            if normal_class not in names:
                check.add("prompts.normal_class", f"{normal_class!r} is not the name of any condition")
            elif len({n for n in names if isinstance(n, str)}) < 2:
                check.add("prompts.conditions", "need at least one condition besides the normal class")
    return PromptsEntry(
        conditions=tuple(conditions),
        normal_class=normal_class,
        ensembling=check.choice(d.get("ensembling", _MISSING), "prompts.ensembling", ENSEMBLING),
        file=file,
    )


def _parse_adaptation(check: _Checker, value: Any, prompts: PromptsEntry | None) -> AdaptationEntry | None:
    if value is None:
        return None
    d = check.fields(value, "adaptation", ("file", "method", "target_sensitivity", "conditions", "provenance"))
    if d is None:
        return None
    file = check.text(d.get("file", _MISSING), "adaptation.file")
    if isinstance(file, str) and (problem := relpath_problem(file)):
        check.add("adaptation.file", problem)
    referable = {c.name for c in prompts.referable} if prompts is not None else set()
    raw_conditions = check.json_object(d.get("conditions", _MISSING), "adaptation.conditions", nullable=False)
    conditions = {}
    for name, raw in (raw_conditions.items() if isinstance(raw_conditions, Mapping) else ()):
        at = f"adaptation.conditions.{name}"
        if prompts is not None and name not in referable:
            check.add(at, f"{name!r} is not a referable condition of the prompt table")
        c = check.fields(raw, at, ("head", "threshold", "threshold_source", "report"))
        if c is None:
            continue
        conditions[name] = AdaptedCondition(
            head=check.text(c.get("head", _MISSING), f"{at}.head"),
            threshold=check.number(c.get("threshold", _MISSING), f"{at}.threshold", low=0.0, high=1.0),
            threshold_source=check.choice(c.get("threshold_source", _MISSING), f"{at}.threshold_source",
                                          ADAPTATION_THRESHOLD_SOURCES),
            report=check.json_object(c.get("report", _MISSING), f"{at}.report", nullable=False),
        )
    return AdaptationEntry(
        file=file,
        method=check.text(d.get("method", _MISSING), "adaptation.method"),
        target_sensitivity=check.number(d.get("target_sensitivity", _MISSING), "adaptation.target_sensitivity",
                                        low=0.0, high=1.0, low_inclusive=False),
        conditions=conditions,
        provenance=check.json_object(d.get("provenance", _MISSING), "adaptation.provenance", nullable=False),
    )


def _parse_provenance(check: _Checker, value: Any) -> Provenance | None:
    if value is _MISSING:
        return None
    d = check.fields(value, "provenance", ("tool", "tool_version", "created", "command"), ("host",))
    if d is None:
        return None
    created = check.text(d.get("created", _MISSING), "provenance.created")
    if isinstance(created, str):
        try:
            datetime.strptime(created, CREATED_FORMAT)
        except ValueError:
            check.add("provenance.created", f"must be UTC ISO 8601 like 2025-01-31T14:05:00Z, got {created!r}")
    command = d.get("command", _MISSING)
    if command is not _MISSING and not isinstance(command, str):
        check.add("provenance.command", f"must be a string, got {_kind(command)}")
    return Provenance(
        tool=check.text(d.get("tool", _MISSING), "provenance.tool"),
        tool_version=check.text(d.get("tool_version", _MISSING), "provenance.tool_version"),
        created=created,
        command=command,
        host=check.text(d.get("host"), "provenance.host", nullable=True),
    )


def _parse_files(check: _Checker, value: Any) -> dict[str, str]:
    if value is _MISSING:
        return {}
    if not isinstance(value, Mapping):
        check.add("files", f"must be an object mapping paths to sha256, got {_kind(value)}")
        return {}
    for path, digest in value.items():
        at = f"files[{path!r}]"
        if path == MANIFEST_NAME:
            check.add(at, "manifest.json cannot pin itself")
        elif problem := relpath_problem(path):
            check.add(at, problem)
        check.sha256(digest, at)
    for path in parent_conflicts(list(value)):
        check.add(f"files[{path!r}]", "is listed as a file but another path uses it as a directory")
    return dict(value)
