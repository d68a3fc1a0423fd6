"""``edge-retina convert``: teacher checkpoint -> bundle."""
from __future__ import annotations

from pathlib import Path

import click

from converters.commands.options import TEACHER_OPTION, teacher_options as parse_teacher_options
from converters.prompts import DEFAULT_PROMPT_FILE
from converters.teachers import list_families


@click.command()
@click.option("--family", type=click.Choice(list_families()), default="reference", show_default=True)
@click.option("--checkpoint", type=click.Path(path_type=Path, dir_okay=True), default=None,
              help="Teacher checkpoint (default: the family's embedded weights, where it has them).")
@click.option("--prompts", "prompt_file", type=click.Path(path_type=Path, dir_okay=False),
              default=DEFAULT_PROMPT_FILE, show_default=True, help="Prompt file (conditions and their prompts).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Bundle directory to write.")
@click.option("--backends", default="onnxruntime,openvino", show_default=True)
@click.option("--archive", type=click.Path(path_type=Path), default=None,
              help="Also pack the bundle into this single archive file.")
@TEACHER_OPTION
def convert(family: str, checkpoint: Path | None, prompt_file: Path, out: Path, backends: str,
            archive: Path | None, teacher_options: tuple[str, ...]) -> None:
    """Teacher checkpoint -> FP32 bundle (ONNX Runtime and OpenVINO engines + prompt table)."""
    from converters.bundle_builder import BundleRecipe, build_bundle
    from converters.teachers import load_teacher

    teacher = load_teacher(family, checkpoint, **parse_teacher_options(teacher_options))
    bundle = build_bundle(BundleRecipe.from_teacher(teacher, prompt_file), out,
                          backends=[b.strip() for b in backends.split(",")], archive=archive)
    click.echo(f"bundle written to {bundle}" + (f" and {archive}" if archive else ""))


