"""``edge-retina archive``: screen an archive of photographs on Ray, and summarise the results."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from edge_retina.archive_screening.run import ArchiveProgress, screen_archive
from edge_retina.archive_screening.sources import expand_sources
from edge_retina.archive_screening.summary import summarise_results
from edge_retina.command_error import fail
from edge_retina.console_tables import print_wrapped, rich_table
from edge_retina.engines import BACKENDS, PRECISIONS
from edge_retina.errors import EdgeRetinaError
from edge_retina.wording import plural

#: Without a terminal (a batch job's log), a progress line this often.
LOG_EVERY_SECONDS = 30.0


@click.group()
def archive() -> None:
    """Re-screen archives of photographs on Ray (local or a cluster); summarise the results."""


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.fields.get('rate', 0.0):.1f} photos/s")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


@archive.command("screen")
@click.argument("sources", nargs=-1, required=True)
@click.option("--bundle", "bundle_path", required=True, type=click.Path(path_type=Path),
              help="Bundle directory or archive (on storage every node can read).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Results: a Parquet dataset folder (e.g. results.parquet); a re-run adds only what is missing.")
@click.option("--address", default=None, help="Ray cluster to join (default: start a local Ray on this machine).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Screening actors (default: the cluster's CPUs / --threads).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Inference threads (and CPUs reserved) per actor.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Photographs per batch sent to an actor.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None)
@click.option("--precision", type=click.Choice(PRECISIONS), default=None)
@click.option("--recursive/--no-recursive", default=True, help="Descend into sub-folders (default: yes).")
def screen_command(sources, bundle_path, out, address, workers, threads, batch_size, backend, precision,
                   recursive) -> None:
    """Screen SOURCES (folders, globs, CSV/Parquet lists of paths, URIs pyarrow can read).

    Photographs already in --out with the same path, content (sha256) and bundle are skipped, so an
    interrupted run is finished by running it again. Exit status: 0 unless every new row is an error
    (1) or the bundle cannot be loaded (2).
    """
    err = Console(stderr=True)
    try:
        listed = expand_sources(list(sources), recursive=recursive)
    except EdgeRetinaError as exc:
        fail(exc)
    bar = Progress(TextColumn("screening"), BarColumn(), MofNCompleteColumn(), _Rate(), TimeRemainingColumn(),
                   console=err, transient=True, disable=not err.is_terminal)
    task = bar.add_task("archive", total=listed.num_rows, rate=0.0)
    last_line = [0.0]

    def report(p: ArchiveProgress) -> None:
        bar.update(task, total=p.total, completed=p.seen, rate=p.rate)
        if not err.is_terminal and p.seconds - last_line[0] >= LOG_EVERY_SECONDS:
            last_line[0] = p.seconds
            print_wrapped(err, f"{p.seen}/{plural(p.total, 'photo')}, {p.rate:.1f} photos/s, "
                               f"ETA {_duration(p.eta_seconds)}")

    from edge_retina.cli.main import is_verbose  # the root command, which imports this one lazily

    try:
        with bar:
            progress = screen_archive(listed, out, bundle_path, address=address, workers=workers, threads=threads,
                                      batch_size=batch_size, backend=backend, precision=precision,
                                      on_progress=report, verbose=is_verbose(click.get_current_context()))
    except EdgeRetinaError as exc:
        fail(exc)
    print_wrapped(
        err,
        f"{plural(progress.total, 'photo')}: {progress.screened} screened ({plural(progress.errors, 'error')}), "
        f"{progress.skipped} already screened with this bundle; {progress.seconds:.1f} s, {progress.rate:.1f} photos/s"
        + (f" on {plural(progress.workers, 'worker')} (Ray up in {progress.ray_start_seconds:.1f} s)"
           if progress.workers else "")
        + f"; results in {out}"
    )
    if progress.screened and progress.errors == progress.screened:
        sys.exit(1)


@archive.command("summary")
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def summary_command(results, as_json) -> None:
    """Referral rates per condition, ungradable rate and errors by code (newest row per photograph)."""
    try:
        summaries = summarise_results(results)
    except EdgeRetinaError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(summaries, indent=1))
        return
    console = Console()
    for s in summaries:
        rows = [[condition, str(r["referred"]), _percent(r["rate"])] for condition, r in s["referral"].items()]
        rows.append(["any", str(s["refer"]), _percent(s["refer_rate"])])
        # The photo count in the caption: the title wraps at the table's width, which is narrow.
        console.print(rich_table(f"{s['bundle']} ({s['bundle_sha256'][:12]})",
                                 ["condition", "referred", "of gradable"], rows, note=plural(s['photos'], 'photo')))
        print_wrapped(console, f"ungradable: {s['ungradable']} ({_percent(s['ungradable_rate'])} of readable "
                               f"photos); errors: {s['errors']} ({_percent(s['error_rate'])})")
        for code, count in s["errors_by_code"].items():
            print_wrapped(console, f"  {code}: {count}")


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{100 * rate:.1f} %"
