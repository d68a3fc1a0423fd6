"""The bundle manifest (schema_version 1; 2 adds a site adaptation): typed view, validation and
canonical serialisation.

``docs/BUNDLE_FORMAT.md`` is the specification and ``docs/bundle.schema.json`` its JSON Schema, which
jsonschema applies here (code adds only the rules that relate fields to each other). Validation
works on the JSON-shaped dict and collects every problem (each naming its field, e.g.
``engines[1].precision``) before refusing, so a broken manifest is fixed in one round trip. The typed
dataclasses are plain views: build them in code, and ``write_bundle`` validates them through the
same dict path.
"""
from __future__ import annotations

import functools
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

import jsonschema

from edge_retina import __version__
from edge_retina.bundle.paths import MANIFEST_NAME, parent_conflicts, relpath_problem
from edge_retina.engines import preferred_engine
from edge_retina.errors import BundleError
from edge_retina.json_schemas import load_validator
from edge_retina.preprocess.spec import InputSpec

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

    @property
    def accuracy_guard(self) -> Mapping[str, Any]:
        """The converter's accuracy-guard record (``notes.accuracy_guard``, docs/QUANTIZATION.md), or {}:
        ``notes`` is free-form, so another writer's engine may have none or another shape."""
        guard = self.notes.get("accuracy_guard")
        return guard if isinstance(guard, Mapping) else {}

    @property
    def guard_measured_on(self) -> Mapping[str, Any]:
        """Where the guard measured: ``cpu_model`` and ``int8_kernels`` (``devices.MachineFacts``), or {}."""
        measured = self.accuracy_guard.get("measured_on")
        return measured if isinstance(measured, Mapping) else {}


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
    """The manifest's ``prompts`` entry; the embeddings themselves are ``edge_retina.prompt_table.PromptTable``."""

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
# Validation: the JSON Schema (bundle.schema.json, also docs/bundle.schema.json) through jsonschema,
# then the rules that relate fields to each other, which a schema cannot say. Every problem is
# recorded as "<field>: <what is wrong>"; the dataclasses are built only when there is none.

SCHEMA_PATH = Path(__file__).with_name("bundle.schema.json")
_TYPE_WORDS = {"object": "an object", "array": "a list", "string": "a string", "number": "a number",
               "integer": "an integer", "boolean": "true or false", "null": "null"}


@functools.lru_cache(maxsize=None)
def _validator(definition: str | None = None) -> jsonschema.protocols.Validator:
    """The manifest's validator, or one for a ``$defs`` entry of its schema (e.g. "engine")."""
    return load_validator(SCHEMA_PATH, definition)


def _where(path: list[Any]) -> str:
    """"engines[0].files[1]", "files['a/b.onnx']", "adaptation.conditions.glaucoma"."""
    text = ""
    for depth, key in enumerate(path):
        if isinstance(key, int):
            text += f"[{key}]"
        elif depth == 1 and path[0] == "files":
            text += f"[{key!r}]"
        else:
            text += f".{key}" if text else str(key)
    return text


def _bounds(schema: Mapping[str, Any]) -> str:
    words = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    return " and ".join(f"{sign} {schema[key]:g}" for key, sign in words.items() if key in schema)


def _schema_problems(instance: Any, definition: str | None = None, prefix: list[Any] | None = None) -> list[str]:
    """Every schema violation of ``instance``, each as "<field>: <what is wrong>", in a person's words."""
    problems: list[str] = []
    for error in _validator(definition).iter_errors(instance):
        path, value, schema, rule = [*(prefix or []), *error.absolute_path], error.instance, error.schema, error.validator
        if rule == "required":
            found = [(path + [k], "required field is missing") for k in error.validator_value if k not in value]
        elif rule == "additionalProperties" and error.validator_value is False:
            unknown = sorted(set(value) - set(schema.get("properties", {})))
            found = [(path + [k], f"unknown field (schema_version {SCHEMA_VERSION} does not define it)") for k in unknown]
        elif rule == "type":
            wanted = [error.validator_value] if isinstance(error.validator_value, str) else error.validator_value
            found = [(path, f"must be {' or '.join(_TYPE_WORDS[t] for t in wanted)}, got {_kind(value)}")]
        elif rule == "enum":
            found = [(path, f"must be one of {', '.join(map(str, error.validator_value))}; got {value!r}")]
        elif rule in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
            found = [(path, f"must be {_bounds(schema)}, got {value!r}")]
        elif rule == "pattern" and "description" in schema:
            found = [(path, f"must be {schema['description']}, got {_short(value)}")]
        elif rule == "minItems":
            found = [(path, f"must be a non-empty list, got {_kind(value)}")]
        elif rule == "uniqueItems":
            found = [(path, "lists an item twice")]
        else:
            found = [(path, error.message)]
        problems += [f"{_where(p)}: {message}" for p, message in found]
    return list(dict.fromkeys(problems))


def _non_finite(value: Any, path: list[Any]) -> list[str]:
    """JSON has no NaN or Infinity (Python's json module reads them anyway); canonical bytes refuse them."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{_where(path)}: must be a finite number, got {value!r}"]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _non_finite(v, path + [k])]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _non_finite(v, path + [i])]
    return []


def _dicts(value: Any) -> list[tuple[int, Mapping[str, Any]]]:
    return [(i, v) for i, v in enumerate(value) if isinstance(v, Mapping)] if isinstance(value, list) else []


def _engine_problems(engines: Any, prefix: str = "engines") -> list[str]:
    problems = []
    seen: dict[str, int] = {}
    for i, e in _dicts(engines):
        files = e.get("files")
        for j, path in enumerate(files if isinstance(files, list) else []):
            if isinstance(path, str) and (problem := relpath_problem(path)):
                problems.append(f"{prefix}[{i}].files[{j}]: {problem}")
        if e.get("backend") == "openvino" and isinstance(files, list) and files and not str(files[0]).endswith(".xml"):
            problems.append(f"{prefix}[{i}].files[0]: an OpenVINO engine loads its .xml first (then the .bin)")
        # Two engines preferred_engine cannot tell apart would make the choice depend on list order alone.
        key = repr(tuple(e.get(k) for k in ("backend", "precision", "role", "device_profile")))
        if key in seen:
            problems.append(f"{prefix}[{i}]: same backend/precision/role/device_profile as {prefix}[{seen[key]}]")
        seen.setdefault(key, i)
    return problems


def _prompt_problems(prompts: Any) -> list[str]:
    if not isinstance(prompts, Mapping):
        return []
    problems = []
    if isinstance(prompts.get("file"), str) and (problem := relpath_problem(prompts["file"])):
        problems.append(f"prompts.file: {problem}")
    normal_class, conditions = prompts.get("normal_class"), _dicts(prompts.get("conditions"))
    for i, c in conditions:
        if c.get("threshold", 0) is None and c.get("name") != normal_class:
            problems.append(f"prompts.conditions[{i}].threshold: must be a number (only the normal class "
                            f"{normal_class!r} may have none), got null")
    names = [c.get("name") for _, c in conditions]
    for name in sorted({n for n in names if isinstance(n, str) and names.count(n) > 1}):
        problems.append(f"prompts.conditions: condition name {name!r} is used more than once")
    if isinstance(normal_class, str) and conditions:
        if normal_class not in names:
            problems.append(f"prompts.normal_class: {normal_class!r} is not the name of any condition")
        elif len({n for n in names if isinstance(n, str)}) < 2:
            problems.append("prompts.conditions: need at least one condition besides the normal class")
    return problems


def _adaptation_problems(adaptation: Any, prompts: Any, version: Any) -> list[str]:
    if not isinstance(adaptation, Mapping):
        return []
    problems = []
    if version != ADAPTATION_SCHEMA_VERSION:
        problems.append(f"adaptation: a site adaptation needs schema_version {ADAPTATION_SCHEMA_VERSION}, got {version!r}")
    if isinstance(adaptation.get("file"), str) and (problem := relpath_problem(adaptation["file"])):
        problems.append(f"adaptation.file: {problem}")
    if isinstance(prompts, Mapping) and isinstance(adaptation.get("conditions"), Mapping):
        normal = prompts.get("normal_class")
        referable = {c.get("name") for _, c in _dicts(prompts.get("conditions"))} - {normal}
        problems += [f"adaptation.conditions.{name}: {name!r} is not a referable condition of the prompt table"
                     for name in adaptation["conditions"] if name not in referable]
    return problems


def _files_problems(files: Any) -> list[str]:
    if not isinstance(files, Mapping):
        return []
    problems = []
    for path in files:
        if path == MANIFEST_NAME:
            problems.append(f"files[{path!r}]: manifest.json cannot pin itself")
        elif problem := relpath_problem(path):
            problems.append(f"files[{path!r}]: {problem}")
    problems += [f"files[{path!r}]: is listed as a file but another path uses it as a directory"
                 for path in parent_conflicts(list(files))]
    return problems


def _unlisted(d: Mapping[str, Any], listed: Collection[str]) -> list[str]:
    """Files the manifest refers to that its ``files`` table does not pin."""
    referred = [(f"engines[{i}].files[{j}]", path) for i, e in _dicts(d.get("engines"))
                for j, path in enumerate(e.get("files") if isinstance(e.get("files"), list) else [])]
    for section in ("prompts", "adaptation"):
        if isinstance(d.get(section), Mapping) and "file" in d[section]:
            referred.append((f"{section}.file", d[section]["file"]))
    return [f"{where}: {path!r} is not listed in files" for where, path in referred
            if isinstance(path, str) and path not in listed]


def _parse(d: Any, *, source: str, pending_files: Collection[str] | None) -> Manifest:
    """Validate and build. With ``pending_files`` (write_bundle), the manifest's own ``files`` is
    ignored and references are checked against the files about to be written."""
    if not isinstance(d, Mapping):
        raise ManifestError(source, [f"(top level): must be an object, got {_kind(d)}"])
    version = d.get("schema_version")
    if "schema_version" in d and (
        not isinstance(version, int) or isinstance(version, bool) or version not in SUPPORTED_SCHEMA_VERSIONS
    ):
        # Refuse before anything else: fields of an unknown version would only produce noise.
        raise ManifestError(source, [
            f"schema_version: {_short(version)} is not supported; this edge-retina ({__version__}) reads "
            f"schema_version {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}. "
            "Upgrade edge-retina or rebuild the bundle with a matching converter."
        ])
    if pending_files is not None:
        d = {**d, "files": {}}
    problems = _schema_problems(d) + _non_finite(dict(d), [])
    if isinstance(d.get("input"), Mapping):
        try:
            input_spec = InputSpec.from_dict(dict(d["input"]))
        except (TypeError, ValueError) as exc:
            problems.append(f"input: {exc}")
    problems += _engine_problems(d.get("engines")) + _prompt_problems(d.get("prompts"))
    problems += _adaptation_problems(d.get("adaptation"), d.get("prompts"), version) + _files_problems(d.get("files"))
    listed = set(pending_files) if pending_files is not None else set(d["files"]) if isinstance(d.get("files"), Mapping) else set()
    problems += _unlisted(d, listed)
    if problems:
        raise ManifestError(source, list(dict.fromkeys(problems)))
    return Manifest(
        schema_version=version,
        model=_model(d["model"]),
        input=input_spec,
        engines=tuple(_engine(e) for e in d["engines"]),
        prompts=_prompts(d["prompts"]),
        logit_scale=float(d["logit_scale"]),
        provenance=Provenance(**{k: d["provenance"].get(k) for k in ("tool", "tool_version", "created", "command", "host")}),
        files=dict(d["files"]),
        adaptation=_adaptation(d["adaptation"]) if d.get("adaptation") is not None else None,
    )


def engine_from_dict(d: Any, source: str) -> EngineEntry:
    """One ``engines`` entry, checked as the manifest checks it; ``ManifestError`` lists what is wrong."""
    problems = _schema_problems(d, "engine", ["engines", 0]) + _non_finite(d, ["engines", 0]) + _engine_problems([d])
    if problems:
        raise ManifestError(source, problems)
    return _engine(d)


# Building the dataclasses from a validated manifest.

def _model(d: Mapping[str, Any]) -> ModelInfo:
    s = d.get("student")
    student = None if s is None else StudentInfo(name=s["name"], arch=s["arch"], checkpoint_sha256=s["checkpoint_sha256"],
                                                 distillation=s.get("distillation", {}))
    return ModelInfo(family=d["family"], name=d["name"], teacher_checkpoint_sha256=d["teacher_checkpoint_sha256"],
                     embedding_dim=d["embedding_dim"], student=student)


def _engine(d: Mapping[str, Any]) -> EngineEntry:
    c = d.get("calibration")
    return EngineEntry(
        backend=d["backend"], precision=d["precision"], role=d["role"], files=d["files"],
        device_profile=d.get("device_profile"), toolchain=d.get("toolchain", {}),
        calibration=None if c is None else CalibrationInfo(c["manifest_sha256"], c["size"], c["method"]),
        notes=d.get("notes", {}), fallback=d.get("fallback"),
    )


def _prompts(d: Mapping[str, Any]) -> PromptsEntry:
    conditions = tuple(ConditionEntry(name=c["name"], label=c["label"], prompts=c["prompts"],
                                      threshold=None if c["threshold"] is None else float(c["threshold"]),
                                      threshold_source=c["threshold_source"]) for c in d["conditions"])
    return PromptsEntry(conditions=conditions, normal_class=d["normal_class"], ensembling=d["ensembling"], file=d["file"])


def _adaptation(d: Mapping[str, Any]) -> AdaptationEntry:
    conditions = {name: AdaptedCondition(head=c["head"], threshold=float(c["threshold"]),
                                         threshold_source=c["threshold_source"], report=c["report"])
                  for name, c in d["conditions"].items()}
    return AdaptationEntry(file=d["file"], method=d["method"], target_sensitivity=float(d["target_sensitivity"]),
                           conditions=conditions, provenance=d["provenance"])


def _kind(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {_short(value)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
