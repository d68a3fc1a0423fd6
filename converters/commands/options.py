"""Options shared by the host commands."""
from __future__ import annotations

import click

from converters.teachers import list_families


def teacher_options(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--teacher-option key=value`` pairs (e.g. text_model_path=/models/Bio_ClinicalBERT)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--teacher-option")
        options[key.strip()] = value
    return options


TEACHER_OPTION = click.option(
    "--teacher-option", "teacher_options", multiple=True, metavar="KEY=VALUE",
    help="Option for the teacher adapter, repeatable (e.g. text_model_path=DIR for FLAIR's local text tower).",
)


# The families as a metavar would run past 80 columns in --help; named in the help text, which wraps.
FAMILY_OPTION = click.option(
    "--family", type=click.Choice(list_families()), default="reference", show_default=True, metavar="FAMILY",
    help=f"Teacher family: {', '.join(list_families())}.",
)
