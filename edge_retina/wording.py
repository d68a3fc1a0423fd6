"""Wording for people: counts with their nouns. A leaf module (it imports nothing of ours), so any
module of the runtime (the backends and adaptation as well as the console tables, which import
them through the screener) and the bridge and converters above it word a count the same way.
"""
from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """"1 image", "3 images": a count for people; ``nouns`` is the plural when it is not ``noun`` + "s"
    ("1 entry", "2 entries")."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
