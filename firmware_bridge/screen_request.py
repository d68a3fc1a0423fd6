"""Checking a SCREEN request's metadata: ``screen_request.schema.json`` (also
docs/bridge_screen_request.schema.json) through jsonschema, then what relates the metadata to the
image bytes, which a schema cannot say. Every refusal is a ``bad_request`` naming the field."""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import jsonschema

from edge_retina.json_schemas import load_validator
from edge_retina.preprocess.raw import frame_size

from .protocol import ErrorCode, ProtocolError
from .store import parse_time

SCHEMA_PATH = Path(__file__).with_name("screen_request.schema.json")
_PROPERTIES = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))["properties"]
#: The image formats a SCREEN may carry (HELLO announces them).
IMAGE_FORMATS = tuple(_PROPERTIES["format"]["enum"])
#: How a SCREEN's image may travel (its ``body``; HELLO announces those the connection takes), and the
#: value for a raw frame in a sealed memfd passed with the frame (protocol 1.2, Unix sockets).
BODY_TRANSPORTS = tuple(_PROPERTIES["body"]["enum"])
FD_BODY = "fd"


@functools.lru_cache(maxsize=1)
def _schema() -> tuple[jsonschema.protocols.Validator, dict[str, str]]:
    """The validator, and each field's description (what the field "must be", for messages)."""
    validator = load_validator(SCHEMA_PATH)
    described: dict[str, str] = {}

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            for name, field in node.get("properties", {}).items():
                described.setdefault(name, field.get("description", ""))
            for child in node.values():
                collect(child)

    collect(validator.schema)
    return validator, described


def _problems(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, "<field> must be ...") for every schema violation, request_id's first."""
    validator, described = _schema()
    found = []
    for error in validator.iter_errors(meta):
        if error.validator == "required":
            missing = [k for k in error.validator_value if k not in error.instance]
            found += [(k, f"{k} is missing ({k} must be {described[k]})") for k in missing]
        else:
            field = str(error.absolute_path[0]) if error.absolute_path else ""
            found.append((field, f"{field} must be {described.get(field) or error.message}"))
    return sorted(dict.fromkeys(found), key=lambda problem: problem[0] != "request_id")


def request_id_of(meta: dict[str, Any]) -> str | None:
    """A message's request id, or None when it has no valid one (what an ERROR about it names)."""
    return _request_id(meta, _problems(meta))


def _request_id(meta: dict[str, Any], problems: list[tuple[str, str]]) -> str | None:
    return None if any(field == "request_id" for field, _ in problems) else meta["request_id"]


def validate_screen(meta: dict[str, Any], body: bytes | memoryview) -> dict[str, Any]:
    """The SCREEN metadata, checked and with defaults filled in (what gets journaled). ``body``: the
    image, the message's body or the frame its file descriptor holds (body fd, which the result's
    metadata does not record: how the image travelled is not the request's)."""
    problems = _problems(meta)
    request_id = _request_id(meta, problems)
    if problems:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "; ".join(message for _, message in problems),
                            request_id=request_id)

    def bad(text: str) -> ProtocolError:
        return ProtocolError(ErrorCode.BAD_REQUEST, text, request_id=request_id)

    if not body:
        raise bad("SCREEN carries no image")
    clean: dict[str, Any] = {"request_id": request_id, "format": meta["format"], "eye": meta.get("eye", "unknown")}
    if meta["format"] == "raw" and "pixel_format" in meta:
        fields = {k: meta.get(k) for k in ("pixel_format", "width", "height", "stride")}
        try:
            fields["stride"], size = frame_size(fields["pixel_format"], fields["width"], fields["height"],
                                                fields["stride"])
        except ValueError as exc:
            raise bad(str(exc)) from None
        if size != len(body):
            raise bad(f"a {fields['width']}x{fields['height']} {fields['pixel_format']} frame with stride "
                      f"{fields['stride']} is {size} bytes, got {len(body)}")
        clean.update(fields)
    elif meta["format"] == "raw":
        shape = meta["shape"]
        if math.prod(shape) != len(body):
            raise bad(f"raw shape {shape} needs {math.prod(shape)} bytes, got {len(body)}")
        clean["shape"] = shape
    if meta.get("patient") is not None:
        clean["patient"] = meta["patient"]
    captured = meta.get("captured_at")
    if captured is not None:
        try:
            parse_time(captured)
        except ValueError:
            raise bad("captured_at must be an ISO-8601 time") from None
        clean["captured_at"] = captured
    return clean
