"""``edge-retina screen``: screen files, folders and globs offline with a bundle."""
from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from edge_retina.bundle.trusted_keys_option import trusted_keys_option
from edge_retina.cli.inputs import expand_inputs
from edge_retina.cli.results_io import ResultWriter, partial_path, result_format
from edge_retina.command_error import EXIT_INTERRUPTED, fail
from edge_retina.console_tables import print_results, print_wrapped, summarise
from edge_retina.engines import BACKENDS, PRECISIONS
from edge_retina.errors import EdgeRetinaError
from edge_retina.out_paths import unwritable_reason
from edge_retina.pipeline import ScreeningPipeline
from edge_retina.screener import Result, Screener
from edge_retina.wording import plural


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--bundle", "bundle_path", required=True, type=click.Path(path_type=Path),
              help="Bundle directory or archive.")
@click.option("--backend", type=click.Choice(BACKENDS), default=None,
              help="Inference backend (default: the bundle's preferred engine available here).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None)
@click.option("--device", default=None, metavar="PROFILE|auto",
              help="Device profile (see 'edge-retina devices list'); default: detect this machine.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Inference threads (default: the backend's).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decode/preprocessing threads (default: the device profile's, else one per core).")
# 4: with two workers on two cores, student-v3's OpenVINO engine screened 1.2-1.5x more photos a second
# in batches of up to 4 than one at a time (BENCHMARKS.md "Throughput"); a batch never waits to fill.
@click.option("--max-batch", type=click.IntRange(min=1), default=4, show_default=True,
              help="Run the engine on up to this many photos at once when they are ready together "
                   "(never waits for a batch to fill).")
@click.option("--conditions", default=None,
              help="Comma-separated conditions to report; the referral decision then covers only these "
                   "(default: all the bundle's).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write results to .csv, .json or .jsonl (rows are flushed as they finish).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --out file (and an interrupted run's <out>.partial).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON on stdout instead of a table.")
@click.option("--recursive/--no-recursive", default=True, help="Descend into sub-folders (default: yes).")
@trusted_keys_option()
def screen(paths, bundle_path, backend, precision, device, threads, workers, max_batch, conditions, out, overwrite,
           as_json, recursive, trusted_dir) -> None:
    """Screen fundus photographs (files, folders, globs) offline.

    A failed image becomes a row with its error and does not stop the batch. Exit status: 0 when at
    least one image was screened, 1 when none could be, 2 when the bundle could not be loaded, the
    --out file cannot be written (a full disk stops the batch; the rows written are kept in
    <out>.partial), or --out or <out>.partial already exists and --overwrite was not given, 130
    when interrupted (Ctrl-C): what was screened is shown, and with --out its rows are kept in
    <out>.partial.
    """
    console = Console(stderr=as_json)
    err = Console(stderr=True)

    if out is not None:
        try:
            result_format(out)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--out") from None
        reason = unwritable_reason(out, overwrite=overwrite)
        if reason:
            fail(f"cannot write results to {out}: {reason}")
        # The rows go to <out>.partial until the batch ends: one already there is an interrupted run's.
        partial = partial_path(out)
        if partial.is_file() and (reason := unwritable_reason(partial, overwrite=overwrite)):
            fail(f"cannot write results to {partial} (the rows of an interrupted run): {reason}")
    chosen = None
    if conditions:
        chosen = [c.strip() for c in conditions.split(",") if c.strip()]
        if not chosen:
            fail(f"--conditions {conditions!r} names no condition")
    started = time.perf_counter()
    try:
        trusted = None
        if trusted_dir is not None:
            from edge_retina.bundle.signing import TrustedKeys  # cryptography: only when asked

            trusted = TrustedKeys.from_directory(trusted_dir)
        screener = Screener.from_bundle(
            bundle_path, backend=backend, device=device, precision=precision, threads=threads, conditions=chosen,
            trusted_keys=trusted,
        )
    except EdgeRetinaError as exc:
        fail(str(exc))

    items = expand_inputs(list(paths), recursive=recursive)
    try:
        writer = ResultWriter(out, screener.conditions) if out else None
    except OSError as exc:
        fail(f"cannot write results to {out}: {exc.strerror or exc}")
    results: list[Result] = []
    progress = Progress(TextColumn("screening"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err, transient=True, disable=not err.is_terminal)
    engine = screener.engine_info
    pipeline = ScreeningPipeline(screener, workers=workers, max_batch=max_batch)
    startup_s = time.perf_counter() - started  # bundle load and verification, engine, listing the inputs

    def source(item):
        return item.path if item.problem is None else Result(item.path, error=item.problem,
                                                             error_code=item.problem_code)

    interrupted = False
    write_error: OSError | None = None  # the --out file could not take a row (a full disk): screening stops
    with screener, progress, pipeline:
        task = progress.add_task("screen", total=len(items))
        try:
            for _, result in pipeline.run(items, source=source, name=lambda item: item.path):
                if writer:  # written before it is counted: a Ctrl-C between the two never counts a lost row
                    try:
                        writer.write(result)
                    except OSError as exc:
                        write_error = exc
                        break
                results.append(result)
                progress.advance(task)
        except KeyboardInterrupt:  # Ctrl-C: stop taking photos, keep and show those finished
            interrupted = True
            # Until the command ends (click closes its context then): what follows, waiting for the
            # photos in flight, closing <out>.partial and the summary, runs to its end.
            click.get_current_context().with_resource(_further_ctrl_c_ignored())
    rows_at = None
    if writer and write_error is not None:
        rows_at = writer.abandon()
    elif writer:
        try:
            rows_at = writer.close(interrupted=interrupted)
        except OSError as exc:
            fail(f"the results are in {writer.partial}: renaming it to {out} failed: {exc.strerror or exc}")

    summary = summarise(results)
    summary["conditions"] = list(screener.conditions)  # the conditions the referral decision covers
    summary["interrupted"] = interrupted
    summary["engine"] = engine
    throughput = pipeline.throughput
    summary["throughput"] = {"workers": pipeline.workers, "max_batch": max_batch, "startup_s": round(startup_s, 3)}
    screened_any = summary["images"] > summary["error"]
    if throughput:
        summary["throughput"]["seconds"] = round(throughput.seconds, 3)
        if screened_any:
            summary["throughput"]["images_per_s"] = round(throughput.images_per_s, 2)
    if as_json:
        click.echo(json.dumps({"results": [r.to_dict() for r in results], "summary": summary}, indent=1))
    else:
        print_results(console, results, screener.conditions, summary)
        if chosen:
            print_wrapped(console, f"referral covers only: {', '.join(screener.conditions)} (--conditions)")
        print_wrapped(console, f"engine: {engine.get('backend')} {engine.get('precision')} ({bundle_path})")
        if throughput and screened_any:
            console.print(f"{throughput.describe()} ({plural(pipeline.workers, 'worker')}); start-up {startup_s:.2f} s")
        if rows_at and not interrupted and write_error is None:
            print_wrapped(console, f"results written to {rows_at}")
    if write_error is not None:
        fail(f"cannot write results to {rows_at}: {write_error.strerror or write_error}; screening stopped after "
             f"{len(results)} of {plural(len(items), 'image')} (the rows written so far stay in that file)")
    if interrupted:
        kept = f"; their rows are in {rows_at} (not renamed to {out}: the run did not finish)" if rows_at else ""
        print_wrapped(err, Text.assemble(("interrupted", "yellow"),
                                         f" after {len(results)} of {plural(len(items), 'image')}{kept}"))
        sys.exit(EXIT_INTERRUPTED)
    if not screened_any:
        sys.exit(1)


@contextlib.contextmanager
def _further_ctrl_c_ignored():
    """SIGINT ignored: a second Ctrl-C pressed while an interrupted run winds down would raise in the
    middle of it, and lose the table and the line saying where the rows are. Only the main thread may
    set signal handlers (and only it gets KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        # None: the handler was not set from Python; the default is the nearest to it.
        signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)
