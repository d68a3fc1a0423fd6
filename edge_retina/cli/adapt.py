"""``edge-retina adapt``: adapt a bundle to a site's labelled photos, or remove an adaptation."""
from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress
from rich.text import Text

from edge_retina.adapt.fit import DEFAULT_TARGET_SENSITIVITY
from edge_retina.adapt.overlay import SUMMARY_HEADERS, adaptation_summary, remove_adaptation
from edge_retina.adapt.selection import METHODS
from edge_retina.adapt.thresholds import MIN_POSITIVES
from edge_retina.command_error import fail
from edge_retina.console_tables import print_wrapped, rich_table
from edge_retina.engines import BACKENDS, PRECISIONS
from edge_retina.errors import EdgeRetinaError
from edge_retina.wording import plural


@click.command(help=f"""Adapt a bundle to a site from a few labelled photos: per condition, a referral threshold
for the target sensitivity and, where it helps, a few-shot head. Writes a new bundle (sign it with
`edge-retina bundle sign`); adapting an adapted bundle replaces its adaptation.

A condition needs at least {MIN_POSITIVES} positives for a site threshold, and as many negatives for a
head; below that the bundle's threshold and zero-shot scores are kept.

Exit status: 0 when written, 2 when the bundle, the labels or --out is refused.""")
@click.option("--bundle", "bundle_path", required=True, type=click.Path(path_type=Path),
              help="The bundle to adapt (directory or archive); it is only read.")
@click.option("--labels", "labels_csv", type=click.Path(path_type=Path, dir_okay=False),
              help="The site's labelled photos: a labels CSV (docs/LABELS.md).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Where to write the adapted bundle: a new directory, or a .erb.tar archive.")
@click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True,
              help="threshold: recalibrate thresholds only; head: also a few-shot head per condition; "
                   "auto: a head only where cross-validation shows it beats zero-shot.")
@click.option("--target-sensitivity", type=click.FloatRange(0.5, 1.0, max_open=True),
              default=DEFAULT_TARGET_SENSITIVITY, show_default=True,
              help="The sensitivity the recalibrated thresholds aim for.")
@click.option("--remove", is_flag=True, help="Write the bundle without its site adaptation instead.")
@click.option("--backend", default=None, type=click.Choice(BACKENDS),
              help="Engine that embeds the photos (default: the bundle's preferred).")
@click.option("--precision", default=None, type=click.Choice(PRECISIONS))
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the folds and bootstrap.")
@click.option("--json", "as_json", is_flag=True, help="Print the adaptation as JSON on stdout.")
def adapt(bundle_path, labels_csv, out, method, target_sensitivity, remove, backend, precision, threads, seed,
          as_json) -> None:
    console = Console(stderr=True)
    try:
        if remove:
            written = remove_adaptation(bundle_path, out)
            print_wrapped(console, f"wrote {written} without the site adaptation")
            return
        if labels_csv is None:
            raise EdgeRetinaError("--labels is needed to adapt (or --remove to remove an adaptation)")
        from edge_retina.adapt.site import adapt_bundle

        with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task("embedding the labelled photos", total=None)
            report = adapt_bundle(bundle_path, labels_csv, out, method=method,
                                  target_sensitivity=target_sensitivity, backend=backend, precision=precision,
                                  threads=threads, seed=seed, progress=lambda n: progress.advance(task, n))
    except EdgeRetinaError as exc:
        fail(exc)
    for why in report.skipped:
        print_wrapped(console, Text.assemble(("left out", "yellow"), f" {why}"))
    adaptation = report.adaptation
    if as_json:
        click.echo(json.dumps({"out": str(report.out), "photos": report.photos, "skipped": report.skipped,
                               "engine": report.engine, "method": adaptation.method,
                               "target_sensitivity": adaptation.target_sensitivity,
                               "conditions": {name: {"head": c.head, "threshold": c.threshold,
                                                     "threshold_source": c.threshold_source, **c.report}
                                              for name, c in adaptation.conditions.items()}}, indent=1))
    console.print(rich_table(f"site adaptation ({plural(report.photos, 'photo')}, {adaptation.method}, "
                             f"target sensitivity {adaptation.target_sensitivity:.0%})", SUMMARY_HEADERS,
                             adaptation_summary(adaptation.conditions), wrap_last=True))
    print_wrapped(console, f"wrote {report.out} (unsigned: sign it with `edge-retina bundle sign`)")
