"""Host-side commands (need the ``convert`` extra): ``edge-retina demo`` and ``edge-retina convert``."""
from __future__ import annotations

import os
from pathlib import Path

import click

from converters.prompts import DEFAULT_PROMPT_FILE
from converters.teachers import list_families

_REPO_SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _teacher_options(pairs: tuple[str, ...]) -> dict[str, str]:
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


def _default_datasets() -> Path | None:
    candidate = Path(os.environ.get("EDGE_RETINA_DATASETS", _REPO_SHARED))
    return candidate if (candidate / "README.md").is_file() else None


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("artifacts/demo"), show_default=True,
              help="Where the default bundle and sample images go.")
@click.option("--datasets", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Labelled fundus datasets for the parity table (default: ../shared/datasets when present).")
@click.option("--rebuild", is_flag=True, help="Rebuild the default bundle even if it is up to date.")
@click.option("--parity-limit", type=int, default=120, show_default=True,
              help="Held-out images per dataset in the parity table.")
def demo(workdir: Path, datasets: Path | None, rebuild: bool, parity_limit: int) -> None:
    """Build the default bundle from the embedded reference model, screen sample images, and print
    latency and parity tables."""
    from converters.demo import DemoConfig, run_demo

    run_demo(DemoConfig(workdir=workdir, datasets=datasets or _default_datasets(), rebuild=rebuild,
                        parity_limit=parity_limit))


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

    teacher = load_teacher(family, checkpoint, **_teacher_options(teacher_options))
    bundle = build_bundle(BundleRecipe.from_teacher(teacher, prompt_file), out,
                          backends=[b.strip() for b in backends.split(",")], archive=archive)
    click.echo(f"bundle written to {bundle}" + (f" and {archive}" if archive else ""))


@click.group()
def prompts() -> None:
    """Prompt tables: show a prompt file or a bundle's prompts; rebuild a bundle's prompt table."""


@prompts.command()
@click.argument("source", type=click.Path(path_type=Path, exists=True))
def show(source: Path) -> None:
    """Show the conditions and prompts of a prompt file (.json) or of a bundle."""
    from rich.console import Console
    from rich.table import Table

    from converters.prompts import load_prompt_file
    from edge_retina.bundle import load_bundle

    if source.suffix == ".json":
        rows = [(c.name, c.label, c.normal, None, c.prompts) for c in load_prompt_file(source)]
        title = f"{source}"
    else:
        manifest = load_bundle(source).manifest
        p = manifest.prompts
        rows = [(c.name, c.label, c.name == p.normal_class, c.threshold, c.prompts) for c in p.conditions]
        title = f"{source} (ensembling {p.ensembling}, logit scale {manifest.logit_scale:.4g})"
    table = Table(title=title, show_lines=True)
    for column in ("condition", "label", "threshold", "prompts"):
        table.add_column(column)
    for name, label, normal, threshold, texts in rows:
        table.add_row(name + (" (normal)" if normal else ""), label,
                      "" if threshold is None else f"{threshold:.3f}", "\n".join(texts))
    Console().print(table)


@prompts.command()
@click.option("--bundle", "bundle_path", type=click.Path(path_type=Path, exists=True), required=True,
              help="The bundle whose prompt table to rebuild (its engines are kept byte for byte).")
@click.option("--prompts", "prompt_file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              required=True, help="The edited prompt file.")
@click.option("--family", type=click.Choice(list_families()), default="reference", show_default=True)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="The teacher checkpoint the bundle was built from (its text tower embeds the prompts).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The new bundle directory.")
@TEACHER_OPTION
def build(bundle_path: Path, prompt_file: Path, family: str, checkpoint: Path | None, out: Path,
          teacher_options: tuple[str, ...]) -> None:
    """Write a copy of a bundle with its prompt table rebuilt from an edited prompt file."""
    from converters.prompt_tables import rebuild_bundle_prompts
    from converters.prompts import load_prompt_file
    from converters.teachers import load_teacher

    try:
        conditions = load_prompt_file(prompt_file)
        result = rebuild_bundle_prompts(bundle_path, load_teacher(family, checkpoint, **_teacher_options(teacher_options)),
                                        conditions, out)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"bundle with {len(conditions)} classes written to {result}")
