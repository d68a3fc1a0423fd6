"""``edge-retina prompts show|build``: prompt files and bundles' prompt tables."""
from __future__ import annotations

from pathlib import Path

import click

from converters.commands.options import FAMILY_OPTION, TEACHER_OPTION
from converters.commands.options import teacher_options as parse_teacher_options
from edge_retina.command_error import fail


@click.group()
def prompts() -> None:
    """Prompt tables: show a prompt file or a bundle's prompts; rebuild a bundle's prompt table."""


@prompts.command()
@click.argument("source", type=click.Path(path_type=Path, exists=True))
def show(source: Path) -> None:
    """Show the conditions and prompts of a prompt file (.json) or of a bundle."""
    from rich.console import Console

    from converters.prompt_files import load_prompt_file
    from edge_retina.bundle import load_bundle
    from edge_retina.console_tables import rich_table

    if source.suffix == ".json":
        try:
            conditions = load_prompt_file(source)
        except ValueError as exc:
            fail(exc)
        rows = [(c.name, c.label, c.normal, None, c.prompts) for c in conditions]
        title = f"{source}"
    else:
        manifest = load_bundle(source).manifest
        p = manifest.prompts
        rows = [(c.name, c.label, c.name == p.normal_class, c.threshold, c.prompts) for c in p.conditions]
        title = f"{source} (ensembling {p.ensembling}, logit scale {manifest.logit_scale:.4g})"
    cells = [[f"{name}{' (normal)' if normal else ''}\n{label}", "" if threshold is None else f"{threshold:.3f}",
              "\n".join(f"- {text}" for text in texts)] for name, label, normal, threshold, texts in rows]
    Console().print(rich_table(title, ["condition", "threshold", "prompts"], cells, details="the prompt file",
                               wrap_last=True))


@prompts.command()
@click.option("--bundle", "bundle_path", type=click.Path(path_type=Path, exists=True), required=True,
              help="The bundle whose prompt table to rebuild (its engines are kept byte for byte).")
@click.option("--prompts", "prompt_file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              required=True, help="The edited prompt file.")
@FAMILY_OPTION
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="The teacher checkpoint the bundle was built from (its text tower embeds the prompts).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The new bundle directory.")
@TEACHER_OPTION
def build(bundle_path: Path, prompt_file: Path, family: str, checkpoint: Path | None, out: Path,
          teacher_options: tuple[str, ...]) -> None:
    """Write a copy of a bundle with its prompt table rebuilt from an edited prompt file."""
    from converters.prompt_tables import rebuild_bundle_prompts
    from converters.prompt_files import load_prompt_file
    from converters.teachers import load_teacher

    try:
        conditions = load_prompt_file(prompt_file)
        result = rebuild_bundle_prompts(bundle_path, load_teacher(family, checkpoint, **parse_teacher_options(teacher_options)),
                                        conditions, out)
    except ValueError as exc:
        fail(exc)
    click.echo(f"bundle with {len(conditions)} classes written to {result}")
