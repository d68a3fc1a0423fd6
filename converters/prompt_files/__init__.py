"""Zero-shot prompt files: per-condition sentence sets that become class embeddings.

A prompt file is JSON (see ``fundus_conditions.json``): ``{"schema": 1, "conditions": [{"name",
"label", "prompts", "normal"?}, ...]}``. Exactly one condition carries ``"normal": true``; every
other condition is scored against it. Conditions are added or removed by editing the file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PROMPT_FILE = Path(__file__).with_name("fundus_conditions.json")
SUPPORTED_SCHEMA = 1


@dataclass(frozen=True)
class Condition:
    """One class for zero-shot scoring: a stable ``name``, a human ``label`` and its prompts."""

    name: str
    label: str
    prompts: tuple[str, ...]
    normal: bool = False


def load_prompt_file(path: str | Path = DEFAULT_PROMPT_FILE) -> list[Condition]:
    """Read and validate a prompt file; raise ``ValueError`` naming the first problem found."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read prompt file {path}: {exc}") from exc
    if doc.get("schema") != SUPPORTED_SCHEMA:
        raise ValueError(f"{path}: schema must be {SUPPORTED_SCHEMA}, got {doc.get('schema')!r}")
    entries = doc.get("conditions")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: 'conditions' must be a non-empty list")
    conditions: list[Condition] = []
    for i, entry in enumerate(entries):
        name, label, prompts = entry.get("name"), entry.get("label"), entry.get("prompts")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path}: condition #{i} has no name")
        if not isinstance(label, str) or not label:
            raise ValueError(f"{path}: condition {name!r} has no label")
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"{path}: condition {name!r} needs a non-empty list of non-empty prompts")
        conditions.append(Condition(name, label, tuple(prompts), bool(entry.get("normal", False))))
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate condition names in {names}")
    normal_class(conditions)  # validates that exactly one condition is the normal class
    return conditions


def normal_class(conditions: list[Condition]) -> Condition:
    """The condition every other one is scored against (the one flagged ``normal``)."""
    normals = [c for c in conditions if c.normal]
    if len(normals) != 1:
        raise ValueError(f"exactly one condition must be flagged normal, found {[c.name for c in normals]}")
    return normals[0]
