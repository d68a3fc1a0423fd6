"""Device profiles: the data files in ``devices/profiles/`` as typed, validated objects.

A profile says how to recognise a kind of device (``detect`` rules), which engine it runs and how
(backend preference, precision, threads, memory budget, TensorRT build options) and what a converter
must emit for it. Each file is validated against ``devices/profile.schema.json`` with jsonschema, a
well-kept implementation of the JSON Schema standard, so the rules live in one declarative place
that editors and other tools can also check against. docs/DEVICES.md describes every field.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import jsonschema

PROFILE_DIR = Path(__file__).parent / "profiles"
SCHEMA_PATH = Path(__file__).parent / "profile.schema.json"


class ProfileError(ValueError):
    """A profile file that does not follow the schema, or a profile name that does not exist.

    A ValueError, not an EdgeRetinaError: the runtime depends on this package, not the reverse, and
    turns it into its own error where it resolves a profile (``edge_retina.engines``)."""


@dataclass(frozen=True)
class DetectRule:
    """One way a profile recognises a machine: every criterion given must hold."""

    priority: int
    jetson_model_contains: tuple[str, ...] = ()
    jetson_module: tuple[str, ...] = ()
    l4t_major: tuple[int, ...] = ()
    cpu_arch: tuple[str, ...] = ()
    cpu_flags_all: tuple[str, ...] = ()
    cpu_flags_any: tuple[str, ...] = ()
    cpu_flags_none: tuple[str, ...] = ()
    int8_kernels: tuple[str, ...] = ()
    openvino_device_any: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineChoice:
    """An engine the runtime looks for: backend and precision, and the backend device to run it on."""

    backend: str
    precision: str
    device: str | None = None


@dataclass(frozen=True)
class TensorRTOptions:
    """How the device builds its TensorRT engine from the bundle's Q/DQ ONNX at first start."""

    version: str
    jetpack: str
    workspace_mib: int
    dla_cores: int
    dla_core: int | None
    gpu_fallback: bool
    timing_cache: str


@dataclass(frozen=True)
class EmitSpec:
    """One artefact a converter must put into a bundle for the profile."""

    backend: str
    precision: str
    options: Mapping[str, Any]


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    title: str
    rationale: str
    detect: tuple[DetectRule, ...]
    precision: str
    preference: tuple[EngineChoice, ...]
    threads: int | None
    memory_budget_mib: int
    max_input_side: int
    tensorrt: TensorRTOptions | None
    emit: tuple[EmitSpec, ...]
    source: Path
    workers: int | None = None  # screening pipeline threads (None: one per usable core)

    def to_dict(self) -> dict[str, Any]:
        """The profile as its data file says it (for ``devices show`` and JSON output)."""
        return json.loads(self.source.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


def parse_profile(data: Any, source: Path) -> DeviceProfile:
    """Validate one profile's JSON data and build the typed profile; ProfileError lists every problem."""
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        listing = "\n".join(f"  - {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors)
        raise ProfileError(f"{source} is not a valid device profile:\n{listing}")
    if data["name"] != source.stem:
        raise ProfileError(f"{source}: profile name {data['name']!r} must equal the file name {source.stem!r}")
    tensorrt = data["tensorrt"]
    return DeviceProfile(
        name=data["name"],
        title=data["title"],
        rationale=data["rationale"],
        detect=tuple(
            DetectRule(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in rule.items()})
            for rule in data["detect"]
        ),
        precision=data["precision"],
        preference=tuple(EngineChoice(**choice) for choice in data["preference"]),
        threads=data["threads"],
        memory_budget_mib=data["memory_budget_mib"],
        max_input_side=data["max_input_side"],
        tensorrt=None if tensorrt is None else TensorRTOptions(**tensorrt),
        emit=tuple(EmitSpec(e["backend"], e["precision"], dict(e["options"])) for e in data["emit"]),
        source=source,
        workers=data.get("workers"),
    )


def load_profile_file(path: Path) -> DeviceProfile:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"cannot read device profile {path}: {exc}") from None
    return parse_profile(data, path)


@lru_cache(maxsize=None)
def load_profiles(directory: Path = PROFILE_DIR) -> dict[str, DeviceProfile]:
    """Every profile in ``directory`` by name, validated (cached: the files ship with the package)."""
    profiles = {}
    for path in sorted(Path(directory).glob("*.json")):
        profile = load_profile_file(path)
        profiles[profile.name] = profile
    if not profiles:
        raise ProfileError(f"no device profiles found in {directory}")
    return profiles


def get_profile(name: str) -> DeviceProfile:
    profiles = load_profiles()
    if name not in profiles:
        raise ProfileError(f"unknown device profile {name!r}; known profiles: {', '.join(sorted(profiles))}")
    return profiles[name]
