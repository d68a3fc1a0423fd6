"""The main job on the embedded default: build the default bundle, screen sample images, and print a
latency table (per engine, per stage) and a parity table (FP32 PyTorch teacher vs every engine).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import cv2
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from converters.bundle_builder import BundleRecipe, build_bundle
from converters.labelled_sets import SHARED_DATASETS, shared_dataset_labels
from converters.parity import parity_report, prepare_tensors, runner_embeddings, torch_embeddings
from converters.teachers import Teacher, load_teacher
from edge_retina.bundle import load_bundle
from edge_retina.cli.screen import print_results, summarise
from edge_retina.errors import BundleError
from edge_retina.screener import Screener

STAGES = ("decode", "preprocess", "inference", "lookup", "total")


@dataclass
class DemoConfig:
    workdir: Path
    datasets: Path | None
    rebuild: bool = False
    latency_rounds: int = 5
    parity_limit: int = 120  # held-out images per dataset in the parity table


def default_bundle(teacher: Teacher, bundle_dir: Path, console: Console, rebuild: bool) -> Path:
    """Reuse ``bundle_dir`` when it verifies and was built from this teacher; otherwise (re)build it."""
    if not rebuild and bundle_dir.exists():
        try:
            manifest = load_bundle(bundle_dir).manifest
            if manifest.model.teacher_checkpoint_sha256 == teacher.checkpoint_sha256:
                console.print(f"default bundle: {bundle_dir} (up to date; --rebuild to rebuild)")
                return bundle_dir
        except BundleError as exc:
            console.print(f"[yellow]rebuilding {bundle_dir}:[/] {exc}")
    with console.status("building the default bundle (FP32 ONNX, ONNX Runtime + OpenVINO engines, prompt table)"):
        build_bundle(BundleRecipe.from_teacher(teacher), bundle_dir, archive=bundle_dir.with_suffix(".erb.tar"),
                     command="edge-retina demo")
    console.print(f"default bundle: {bundle_dir} (built; archive {bundle_dir.with_suffix('.erb.tar').name})")
    return bundle_dir


def sample_images(workdir: Path, datasets: Path | None) -> list[Path]:
    """The CC0 fundus photo from scikit-image, plus full-size camera JPEGs and a few crops when present."""
    from skimage import data as skimage_data

    samples = workdir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    retina = samples / "skimage-retina.jpg"
    if not retina.exists():
        cv2.imwrite(str(retina), cv2.cvtColor(skimage_data.retina(), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    images = [retina]
    if datasets is not None:
        images += sorted((datasets / "heimed" / "full").glob("*.jpg"))[:4]
        images += sorted((datasets / "rimone" / "images").glob("*.jpg"))[:2]
        for label in ("cataract", "glaucoma", "normal", "diabetic_retinopathy"):
            images += sorted((datasets / "eye4class" / "images" / label).glob("*.jpg"))[:1]
    return images


def latency_table(bundle_dir: Path, images: list[Path], rounds: int) -> Table:
    """Per-stage median latency for every engine, engines interleaved image by image (A B A B ...)."""
    manifest = load_bundle(bundle_dir).manifest
    screeners = {f"{e.backend} {e.precision}": Screener.from_bundle(bundle_dir, backend=e.backend, precision=e.precision)
                 for e in manifest.engines}
    timings: dict[str, dict[str, list[float]]] = {name: {s: [] for s in STAGES} for name in screeners}
    for name, s in screeners.items():  # warm-up
        s.screen(images[0])
    for _ in range(rounds):
        for image in images:
            for name, s in screeners.items():
                result = s.screen(image)
                for stage in STAGES:
                    if stage in result.timings_ms:
                        timings[name][stage].append(result.timings_ms[stage])
    for s in screeners.values():
        s.close()
    baseline = next(iter(timings))
    table = Table(title=f"Latency per stage, median ms ({len(images)} images x {rounds} rounds, engines interleaved)")
    table.add_column("engine")
    for stage in STAGES:
        table.add_column(stage, justify="right")
    table.add_column(f"total vs {baseline}", justify="right")
    base_total = statistics.median(timings[baseline]["total"])
    for name, stages in timings.items():
        total = statistics.median(stages["total"])
        table.add_row(name, *[f"{statistics.median(v):.1f}" if v else "-" for v in stages.values()],
                      f"{total / base_total:.2f}x")
    return table


def parity_tables(teacher: Teacher, bundle_dir: Path, datasets: Path, limit: int, console: Console) -> list[Table]:
    bundle = load_bundle(bundle_dir)
    screener = Screener.from_bundle(bundle_dir)
    table_ = screener.prompt_table
    preprocessor = screener.preprocessor
    screener.close()
    tables = []
    for dataset in SHARED_DATASETS:
        labelled = shared_dataset_labels(datasets, dataset, split="test", limit=limit)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"parity on {dataset}", total=len(labelled.paths))
            tensors, kept, skipped = prepare_tensors(preprocessor, labelled.paths,
                                                     lambda n: progress.advance(task, n))
        labels = {c: y[kept] for c, y in labelled.labels.items()}
        embeddings = {"teacher (PyTorch fp32)": torch_embeddings(teacher.image_encoder, tensors)}
        for e in bundle.manifest.engines:
            with Screener.from_bundle(bundle_dir, backend=e.backend, precision=e.precision) as s:
                embeddings[f"{e.backend} {e.precision}"] = runner_embeddings(s.runner, tensors)
        report = parity_report("teacher (PyTorch fp32)", embeddings, labels, table_, skipped)
        t = Table(title=f"Zero-shot AUROC parity on {dataset} (held-out test split, {len(kept)} images)")
        t.add_column("condition")
        t.add_column("n+/n-", justify="right")
        for name in embeddings:
            t.add_column(name, justify="right")
        for row in report.rows:
            cells = [f"{row.auroc[report.reference]:.4f}"]
            cells += [f"{row.auroc[n]:.4f} ({report.delta(row, n):+.4f})" for n in embeddings if n != report.reference]
            t.add_row(row.condition, f"{row.n_pos}/{row.n_neg}", *cells)
        t.add_row("embedding cosine to teacher (mean / min)", "", "1", *[
            f"{c.mean():.6f} / {c.min():.6f}" for c in report.cosine.values()])
        tables.append(t)
    return tables


def run_demo(config: DemoConfig) -> dict:
    console = Console()
    teacher = load_teacher("reference")
    console.print(f"teacher: reference model {teacher.name} (sha256 {teacher.checkpoint_sha256[:12]}…), "
                  f"input {teacher.input_spec.size[0]}x{teacher.input_spec.size[1]}")
    bundle_dir = default_bundle(teacher, config.workdir / "default-bundle", console, config.rebuild)

    images = sample_images(config.workdir, config.datasets)
    with Screener.from_bundle(bundle_dir) as screener:
        results = [screener.screen(p) for p in images]
        summary = summarise(results)
        print_results(console, results, screener.conditions, summary)
    console.print(latency_table(bundle_dir, images, config.latency_rounds))
    if config.datasets is None:
        console.print("[yellow]parity table skipped: no labelled datasets found (pass --datasets)[/]")
    else:
        for t in parity_tables(teacher, bundle_dir, config.datasets, config.parity_limit, console):
            console.print(t)
    console.print(f"\nnext: edge-retina screen YOUR_FOLDER --bundle {bundle_dir}")
    return summary
