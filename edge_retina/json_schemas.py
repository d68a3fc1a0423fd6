"""Validators for our JSON Schemas (the bundle manifest, the bridge's requests), from jsonschema."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema


def _strict_integer(checker: jsonschema.TypeChecker, instance: object) -> bool:
    # JSON Schema counts 1.0 as an integer; a shape, a size or a dimension we index or allocate with
    # must be a whole number as written, so here an integer is what the JSON reader returns as int.
    return isinstance(instance, int) and not isinstance(instance, bool)


def load_validator(path: Path, definition: str | None = None) -> jsonschema.protocols.Validator:
    """The validator of the schema at ``path`` (checked first), or of its ``$defs`` entry ``definition``."""
    schema = json.loads(path.read_text(encoding="utf-8"))
    base = jsonschema.validators.validator_for(schema)
    base.check_schema(schema)
    strict = jsonschema.validators.extend(base, type_checker=base.TYPE_CHECKER.redefine("integer", _strict_integer))
    if definition is not None:
        schema = {"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    return strict(schema)
