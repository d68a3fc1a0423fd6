"""``edge-retina demo``: the main job on the embedded default."""
from __future__ import annotations

from pathlib import Path

import click

from edge_retina.bench.shared_datasets import shared_datasets_dir
from edge_retina.command_error import fail


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("artifacts/demo"), show_default=True,
              help="Where the default bundle, its demo signing key and sample images go.")
@click.option("--datasets", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Labelled fundus datasets for the parity table (default: ../shared/datasets when present).")
@click.option("--rebuild", is_flag=True, help="Rebuild the default bundle even if it is up to date.")
@click.option("--parity-limit", type=int, default=120, show_default=True,
              help="Held-out images per dataset in the parity table.")
def demo(workdir: Path, datasets: Path | None, rebuild: bool, parity_limit: int) -> None:
    """Build the default bundle (the embedded student, distilled from the embedded reference model),
    sign it with a demo key (not for production) and verify it, screen sample images, and print
    latency and parity tables."""
    from converters.convert_pipeline import ConvertError
    from converters.demo import DemoConfig, DemoSigningError, run_demo

    try:
        run_demo(DemoConfig(workdir=workdir, datasets=datasets or shared_datasets_dir(), rebuild=rebuild,
                            parity_limit=parity_limit))
    except (ConvertError, DemoSigningError) as exc:
        # building or signing the default bundle failed: the run's outcome (1), as `convert`'s
        fail(exc, exit_code=1)


