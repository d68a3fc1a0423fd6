"""``edge-retina bench``: latency per stage and AUROC parity of a bundle on this machine.

``latency`` and ``parity --reference fp32`` are runtime-only (they run on a device). The research-code
baseline, ``parity --reference teacher``, ``labels`` and ``--html`` need host code (torch, the teacher
adapters, matplotlib); like the host commands in main.py's registry, that code is imported only when
asked for, and a device without the ``convert`` extra gets the one-line "install the extra" message.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from edge_retina.bench.shared_datasets import shared_datasets_dir
from edge_retina.cli.inputs import expand_inputs
from edge_retina.command_error import fail
from edge_retina.console_tables import parity_console_tables, print_wrapped, rich_table
from edge_retina.engines import BACKENDS, PRECISIONS
from edge_retina.errors import EdgeRetinaError, named_once
from edge_retina.extras import import_for
from edge_retina.out_paths import misnamed_reason, unwritable_reason
from edge_retina.wording import plural

EXIT_GATE_FAILED = 1


def _check_out(out: Path | None, html: Path | None, *, overwrite: bool) -> None:
    """Refuse an --out or --html that cannot be written, or that holds a report and --overwrite was not
    given, before the benchmark runs, not after it; and one not named for its format (--out .json,
    --html .html or .htm), as `screen` refuses a suffix it cannot write."""
    for path, kind, suffixes in ((out, "JSON", (".json",)), (html, "HTML", (".html", ".htm"))):
        if path is None:
            continue
        reason = misnamed_reason(path, kind, suffixes) or unwritable_reason(path, overwrite=overwrite)
        if reason:
            fail(f"cannot write the report to {path}: {reason}")


overwrite_option = click.option("--overwrite", is_flag=True, help="Replace an existing --out or --html report.")


def _write_json(data: dict, path: Path | None, to_stdout: bool) -> None:
    text = json.dumps(data, indent=1, default=float)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    if to_stdout:
        click.echo(text)


@click.group()
def bench() -> None:
    """Benchmark a bundle here: latency per stage, and AUROC parity against a reference."""


def _benchmark_images(images: tuple[str, ...]) -> list[Path]:
    if not images:
        shared = shared_datasets_dir()
        if shared is None:
            raise EdgeRetinaError("no --images given and no shared datasets found (set EDGE_RETINA_DATASETS)")
        images = (str(shared / "heimed" / "full"),)
    items = expand_inputs(list(images))
    problems = [named_once(i.path, i.problem) for i in items if i.problem]
    if problems:
        raise EdgeRetinaError("; ".join(problems))
    return [Path(i.path) for i in items]


@bench.command()
@click.option("--bundle", "bundle_path", required=True, type=click.Path(path_type=Path),
              help="Bundle directory or archive.")
@click.option("--backend", default="all", show_default=True,
              type=click.Choice(["all", *BACKENDS]))
@click.option("--precision", default="all", show_default=True, type=click.Choice(["all", *PRECISIONS]))
@click.option("--images", multiple=True, help="Image files, folders or globs (repeatable; default: the 8 HEI-MED "
              "camera originals of the shared datasets).")
@click.option("--max-images", type=click.IntRange(min=1), default=8, show_default=True,
              help="Time the first this many images that can be read (those left out do not count).")
@click.option("--iterations", type=click.IntRange(min=1), default=10, show_default=True, help="Rounds over the images.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Inference threads per engine (default: the backend's).")
@click.option("--streams", type=click.IntRange(min=1), default=2, show_default=True,
              help="Concurrent streams for the throughput test.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decode threads of the screening-pipeline throughput test (default: one per core).")
@click.option("--cold-runs", type=click.IntRange(min=0), default=3, show_default=True,
              help="Fresh processes for cold start and peak RSS (0: skip).")
@click.option("--baseline", default=None, help="'research' (PIL + PyTorch FP32 teacher, host only) or a pipeline "
              "name such as onnxruntime/fp32/teacher; ratios are against it (default: research if run, "
              "else the first engine).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Teacher checkpoint for --baseline research (default: the family's embedded weights).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report (with samples and machine) as JSON.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the JSON report here.")
@click.option("--html", type=click.Path(path_type=Path), default=None, help="Write an HTML report (host only).")
@overwrite_option
def latency(bundle_path, backend, precision, images, max_images, iterations, threads, streams, workers, cold_runs,
            baseline, checkpoint, as_json, out, html, overwrite) -> None:
    """Per-stage latency, raw engine, throughput, cold start and peak RSS, engines interleaved.

    Exit status: 0 when measured, 2 when the bundle, the images, --out or --html is refused."""
    from edge_retina.bench.latency import (
        latency_table_rows,
        run_latency,
        select_engines,
        system_table_rows,
    )

    console = Console(stderr=as_json)
    _check_out(out, html, overwrite=overwrite)
    try:
        image_paths = _benchmark_images(images)
        engines = select_engines(bundle_path, backend, precision)
        if baseline not in (None, "research", *(e.describe() for e in engines)):
            raise EdgeRetinaError(f"--baseline {baseline!r} is neither 'research' nor one of the engines benchmarked "
                                  f"({', '.join(e.describe() for e in engines)})")
        report_html = import_for("converters.report_html", "the HTML report (--html)") if html else None
        extra = []
        if baseline == "research":
            extra.append(_research_pipeline(bundle_path, checkpoint, threads))
        with console.status(f"benchmarking {plural(len(engines) + len(extra), 'pipeline')} on "
                            f"{plural(min(len(image_paths), max_images), 'image')}"):
            report = run_latency(bundle_path, engines, image_paths, iterations=iterations, threads=threads,
                                 streams=streams, workers=workers, cold_runs=cold_runs, extra_pipelines=extra,
                                 baseline=None if baseline == "research" else baseline, max_images=max_images)
    except EdgeRetinaError as exc:
        fail(str(exc))
    data = report.to_dict()
    console.print(rich_table(f"Latency per stage, median ms ({plural(len(report.images), 'image')} x "
                             f"{plural(iterations, 'round')}, "
                             f"interleaved); speed-up against {data['baseline']}", *latency_table_rows(data),
                             width=console.width))
    console.print(rich_table("Throughput, cold start, memory", *system_table_rows(data), width=console.width))
    for why in report.left_out:
        print_wrapped(console, Text.assemble(("left out", "yellow"), f" {why}"))
    machine = report.machine
    print_wrapped(console, f"machine: {machine['cpu_model']}, {machine['usable_cores']} cores, "
                           f"load average {machine['load_average_1min']}")
    _write_json(data, out, as_json)
    if report_html:
        report_html.write_report(html, latency=data)
        print_wrapped(console, f"HTML report: {html}")


def _research_pipeline(bundle_path: Path, checkpoint: Path | None, threads: int | None):
    from edge_retina.bench.parity import bundle_prompt_table
    from edge_retina.bundle import load_bundle

    feature = "the research-code baseline (--baseline research)"
    parity = import_for("converters.parity_references", feature)
    research = import_for("converters.research_baseline", feature)
    bundle = load_bundle(bundle_path)
    teacher = parity.bundle_teacher(bundle.manifest, checkpoint)
    return research.ResearchPipeline(teacher.image_encoder, teacher.input_spec, bundle_prompt_table(bundle), threads)


@bench.command()
@click.option("--bundle", "bundle_path", required=True, type=click.Path(path_type=Path),
              help="Bundle directory or archive.")
@click.option("--labels", "labels_csv", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Labels CSV: a 'file' column and one 0/1/blank column per condition (docs/LABELS.md).")
@click.option("--reference", type=click.Choice(["teacher", "fp32", "base"]), default="teacher", show_default=True,
              help="teacher: the PyTorch FP32 teacher (host only); fp32: the bundle's own FP32 engine; base: a "
                   "site-adapted bundle's preferred engine scored zero-shot, beside its engines adapted.")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Teacher checkpoint for --reference teacher (default: the family's embedded weights).")
@click.option("--student-checkpoint", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="A student bundle's PyTorch student, shown beside its engines with --reference teacher "
                   "(default: the shipped default student, if it is the bundle's).")
@click.option("--backend", default="all", show_default=True,
              type=click.Choice(["all", *BACKENDS]))
@click.option("--precision", default="all", show_default=True, type=click.Choice(["all", *PRECISIONS]))
@click.option("--max-drop", type=float, default=0.005, show_default=True,
              help="Exit 1 when any engine's AUROC is more than this below the reference's.")
@click.option("--replicates", type=click.IntRange(min=100), default=2000, show_default=True,
              help="Bootstrap replicates.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Inference threads per engine.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the JSON report here.")
@click.option("--html", type=click.Path(path_type=Path), default=None, help="Write an HTML report (host only).")
@overwrite_option
@click.option("--latency-json", type=click.Path(path_type=Path, exists=True), default=None,
              help="A 'bench latency --out' report to include in the HTML report.")
def parity(bundle_path, labels_csv, reference, checkpoint, student_checkpoint, backend, precision, max_drop,
           replicates, seed, threads, as_json, out, html, overwrite, latency_json) -> None:
    """AUROC per condition and engine against a reference, with CIs; a release gate.

    Exit status: 0 when every engine is within --max-drop of the reference, 1 when one is not,
    2 when the run could not be made (bundle, labels, an --out or --html refused, missing extra).
    """
    from edge_retina.bench.labels import read_labels_csv
    from edge_retina.bench.latency import select_engines
    from edge_retina.bench.parity import bundle_parity, parity_tables
    from edge_retina.bundle import load_bundle

    console = Console(stderr=as_json)
    _check_out(out, html, overwrite=overwrite)
    try:
        manifest = load_bundle(bundle_path).manifest
        labelled = read_labels_csv(labels_csv, conditions=[c.name for c in manifest.prompts.conditions])
        engines = select_engines(bundle_path, backend, precision)
        report_html = import_for("converters.report_html", "the HTML report (--html)") if html else None
        reference_model, host_models, gate_baseline = None, [], None
        if reference == "teacher":
            host = import_for("converters.parity_references", "parity against the teacher (--reference teacher)")
            reference_model = host.teacher_reference(manifest, checkpoint)
            student = host.bundle_student(manifest, student_checkpoint)  # None for a teacher bundle
            host_models = [student] if student is not None else []
            gate_baseline = student[0] if student is not None else None
        with console.status(f"parity on {plural(len(labelled.paths), 'image')}"):
            report = bundle_parity(bundle_path, labelled, reference=reference_model, host_models=host_models,
                                   engines=engines, threads=threads, replicates=replicates, seed=seed,
                                   base=reference == "base", labels_csv=labels_csv)
    except EdgeRetinaError as exc:
        fail(str(exc))
    for table in parity_console_tables(parity_tables(report), width=console.width):
        console.print(table)
    for s in report.skipped:
        print_wrapped(console, Text.assemble(("skipped", "yellow"), f" {s}"))
    if labelled.ignored_columns:
        console.print(f"ignored label columns (not conditions of this bundle): "
                      f"{escape(', '.join(labelled.ignored_columns))}")
    failures = report.failures(max_drop, gate_baseline)
    baseline = gate_baseline or report.reference
    # "skipped" names photos as the CSV lists them, like the lines above and `adapt --json`: that is the
    # text a program finds in the CSV's rows, and "labels" (absolute) says which CSV they are relative
    # to, whereas the path this run opened depends on the folder it was started from.
    data = {**report.to_dict(), "labels": str(labels_csv.absolute()),
            "ignored_label_columns": list(labelled.ignored_columns), "max_drop": max_drop,
            "gate_baseline": baseline, "gate": "fail" if failures else "pass", "failures": failures}
    _write_json(data, out, as_json)
    if report_html:
        latency_data = json.loads(latency_json.read_text()) if latency_json else None
        report_html.write_report(html, parity=report, latency=latency_data, max_drop=max_drop,
                                 gate_baseline=gate_baseline)
        print_wrapped(console, f"HTML report: {html}")
    if failures:
        print_wrapped(console, Text.assemble(("parity gate FAILED:", "red"), f" {'; '.join(failures)}"))
        sys.exit(EXIT_GATE_FAILED)
    print_wrapped(console, Text.assemble(("parity gate passed", "green"),
                                         f" (every engine's ΔAUROC ≥ -{max_drop} against {baseline})"))


@bench.command()
@click.option("--dataset", required=True, type=click.Choice(["heimed", "rimone", "eye4class", "odir", "palm"]))
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
@click.option("--datasets", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The shared datasets folder (default: $EDGE_RETINA_DATASETS or ../shared/datasets).")
@click.option("--limit", type=int, default=None, help="Keep the first N labelled images (a stable, class-mixed order).")
@click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False))
def labels(dataset, split, datasets, limit, out) -> None:
    """Write a labels CSV for one of the shared datasets' splits (host only)."""
    from edge_retina.bench.labels import write_labels_csv

    if reason := unwritable_reason(out):
        fail(f"cannot write the labels CSV to {out}: {reason}")
    try:
        root = datasets or shared_datasets_dir()
        if root is None:
            raise EdgeRetinaError("shared datasets not found: pass --datasets or set EDGE_RETINA_DATASETS")
        sets = import_for("converters.labelled_sets", "'bench labels'")
        labelled = sets.shared_dataset_labels(root, dataset, split, limit)
    except EdgeRetinaError as exc:
        fail(str(exc))
    write_labels_csv(labelled, out)
    counts = ", ".join(f"{c} {int((y == 1).sum())}/{int((y == 0).sum())}" for c, y in labelled.labels.items())
    print_wrapped(Console(), f"{out}: {plural(len(labelled.paths), 'image')} ({counts} positives/negatives)")
