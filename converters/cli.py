"""Host-side commands (need the ``convert`` extra): ``edge-retina demo`` and ``edge-retina convert``."""
from __future__ import annotations

import os
from pathlib import Path

import click

from converters.prompts import DEFAULT_PROMPT_FILE
from converters.teachers import list_families

_REPO_SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


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
def convert(family: str, checkpoint: Path | None, prompt_file: Path, out: Path, backends: str,
            archive: Path | None) -> None:
    """Teacher checkpoint -> FP32 bundle (ONNX Runtime and OpenVINO engines + prompt table)."""
    from converters.bundle_builder import BundleRecipe, build_bundle
    from converters.teachers import load_teacher

    teacher = load_teacher(family, checkpoint)
    bundle = build_bundle(BundleRecipe.from_teacher(teacher, prompt_file), out,
                          backends=[b.strip() for b in backends.split(",")], archive=archive)
    click.echo(f"bundle written to {bundle}" + (f" and {archive}" if archive else ""))
