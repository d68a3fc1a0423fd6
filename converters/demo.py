"""The main job on the embedded default: build the default bundle (the default student, distilled
from the embedded reference teacher, INT8-quantized), sign it with a demo key and verify it as a
device would, screen sample images with it, and print latency tables (per engine, per stage) and
parity tables (FP32 PyTorch teacher, FP32 PyTorch student and every engine side by side).

The tables come from ``edge-retina bench``'s own API (``edge_retina.bench``), so the demo and the
benchmark commands measure the same way.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.filesize import decimal as format_size
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from converters.accuracy_guard import LADDER_REVISION
from converters.bundle_builder import BundleRecipe
from converters.convert_pipeline import ConvertSettings, EngineTarget, convert
from converters.distill.bundling import student_recipe
from converters.distill.student import STUDENT_WEIGHTS
from converters.labelled_sets import (
    SHARED_DATASETS,
    merge_labelled,
    shared_dataset_labels,
    training_images,
)
from converters.parity_references import bundle_student, teacher_embedder
from converters.reference.data import load_records
from converters.reference.evaluate import TASKS
from converters.teachers import Teacher, load_teacher
from edge_retina import user_caches
from edge_retina.bench.latency import (
    latency_table_rows,
    run_latency,
    select_engines,
    system_table_rows,
)
from edge_retina.bench.parity import bundle_parity
from edge_retina.bench.parity import parity_tables as parity_tables_rows
from edge_retina.bundle import ARCHIVE_SUFFIX, Manifest, load_bundle, verify_bundle
from edge_retina.bundle.signing import (
    PUBLIC_KEY_SUFFIX,
    SignatureError,
    TrustedKeys,
    check_signature,
    generate_key_pair,
    load_private_key,
    public_key_pem,
    sign_bundle,
)
from edge_retina.console_tables import parity_console_tables, print_results, print_wrapped, rich_table, summarise
from edge_retina.errors import BundleError, EdgeRetinaError
from edge_retina.files import write_atomically
from edge_retina.screener import Screener


@dataclass
class DemoConfig:
    workdir: Path
    datasets: Path | None
    rebuild: bool = False
    latency_rounds: int = 5
    parity_limit: int = 120  # held-out images per dataset in the parity table


#: The demo's signing key pair, made once in its work folder: the private key named so that nobody
#: mistakes it for a release key, the public key alone in the folder a device is given (--trusted-keys).
DEMO_KEY_DIR = "demo-signing-key"
DEMO_PRIVATE_KEY = "demo-key-NOT-FOR-PRODUCTION.key"
DEMO_TRUSTED_KEYS = "trusted-keys"


def demo_settings(datasets: Path | None) -> ConvertSettings:
    """INT8 (OpenVINO, ONNX Runtime) beside the FP32 engines when the labelled datasets are here:
    calibrated on training-split images, thresholded on the validation splits, guarded on the training
    and validation splits less the calibration images (never the test splits, which the parity table
    uses). Without data, FP32 engines only."""
    fp32 = [EngineTarget("onnxruntime", "fp32"), EngineTarget("openvino", "fp32")]
    if datasets is None:
        return ConvertSettings(targets=fp32)
    validation = merge_labelled([shared_dataset_labels(datasets, d, split="val") for d in SHARED_DATASETS])
    return ConvertSettings(
        targets=[EngineTarget("openvino", "int8"), EngineTarget("onnxruntime", "int8"), *fp32],
        calibration=training_images(datasets, every=6),
        calibration_size=128,
        validation=validation,
        guard_images=merge_labelled([shared_dataset_labels(datasets, d, split="train") for d in SHARED_DATASETS]),
        # NNCF's accuracy-aware search takes many minutes on this model; the demo relies on the
        # accuracy guard (which falls back when INT8 moves AUROC too far) to stay a few-minute job.
        openvino_accuracy_control=False,
    )


def default_recipe(teacher: Teacher) -> BundleRecipe:
    """The default bundle's model: the shipped default student, distilled from ``teacher`` (the
    embedded reference model), served with the teacher's prompt table."""
    return student_recipe(teacher, STUDENT_WEIGHTS)


def bundle_is_current(manifest: Manifest, teacher: Teacher, recipe: BundleRecipe) -> bool:
    """Whether a bundle is what converting ``recipe`` again would ship: built from this teacher and
    student, its engines' precisions decided by this accuracy guard's ladder (a newer ladder, or one
    that measures differently, may ship other engines)."""
    student = manifest.model.student
    return (manifest.model.teacher_checkpoint_sha256 == teacher.checkpoint_sha256 and student is not None
            and student.checkpoint_sha256 == recipe.student.checkpoint_sha256
            and all(e.accuracy_guard.get("ladder_revision") == LADDER_REVISION
                    for e in manifest.engines if e.accuracy_guard))


def default_bundle(teacher: Teacher, bundle_dir: Path, datasets: Path | None, console: Console, rebuild: bool) -> Path:
    """Reuse ``bundle_dir`` when it verifies and is current (``bundle_is_current``); otherwise (re)build
    it with the one-shot converter (each of its steps is cached, so a rebuild resumes)."""
    recipe = default_recipe(teacher)
    if not rebuild and bundle_dir.exists():
        try:
            if bundle_is_current(load_bundle(bundle_dir).manifest, teacher, recipe):
                print_wrapped(console, f"default bundle: {bundle_dir} (up to date; --rebuild to rebuild)")
                return bundle_dir
        except BundleError as exc:
            print_wrapped(console, Text.assemble((f"rebuilding {bundle_dir}:", "yellow"), f" {exc}"))
    if bundle_dir.exists():
        shutil.rmtree(bundle_dir)
    archive = bundle_dir.with_suffix(ARCHIVE_SUFFIX)
    settings = demo_settings(datasets)
    if settings.validation is not None:
        # Refer only on what could be validated: a condition without labelled data (AMD here: the
        # reference model never saw it) would get an untested default threshold.
        validated = set(settings.validation.labels)
        dropped = [c.name for c in recipe.conditions if not c.normal and c.name not in validated]
        recipe.conditions = [c for c in recipe.conditions if c.normal or c.name in validated]
        if dropped:
            print_wrapped(console, "conditions without validation data, left out of the default bundle: "
                                   + ", ".join(dropped))
    convert(recipe, bundle_dir, settings, archive=archive,
            command="edge-retina demo", progress=lambda message: print_wrapped(console, message))
    print_wrapped(console, f"default bundle: {bundle_dir} (built; archive {archive.name})")
    return bundle_dir


class DemoSigningError(EdgeRetinaError):
    """Signing or verifying the default bundle failed. The bundle was built by then: the run's
    outcome (exit 1), as a failed conversion step is, not a refusal before the work."""


def demo_signing_key(key_dir: Path) -> tuple[Ed25519PrivateKey, TrustedKeys]:
    """The demo's private key and the keys a device trusts, made on the first run (the private key
    mode 0600) and reused by later ones. The trusted public key is derived from the private key and
    (re)written when it is missing or another key's, so the folder a device is given always takes
    what the demo signs."""
    private = key_dir / DEMO_PRIVATE_KEY
    trusted = key_dir / DEMO_TRUSTED_KEYS
    public = trusted / private.with_suffix(PUBLIC_KEY_SUFFIX).name
    if not private.exists():
        public.unlink(missing_ok=True)  # a lost private key's: a device must not trust it
        generate_key_pair(private, public)
    private_key = load_private_key(private)
    public_pem = public_key_pem(private_key)
    if not public.is_file() or public.read_bytes() != public_pem:
        trusted.mkdir(parents=True, exist_ok=True)
        write_atomically(public, public_pem)
    return private_key, TrustedKeys.from_directory(trusted)


def sign_default_bundle(bundle_dir: Path, key_dir: Path, console: Console) -> TrustedKeys:
    """Sign the bundle directory and its archive (when there is one) with the demo key, then check
    each as ``bundle verify --trusted-keys`` does (every file, and the signature by a trusted key);
    returns the trusted keys, which screening then requires as a device does. A path the demo key
    has already signed (an up-to-date bundle of an earlier run) is not signed again: signing an
    archive unpacks and repacks all of it."""
    try:
        private_key, trusted = demo_signing_key(key_dir)
        demo_key = TrustedKeys([private_key.public_key()], source=str(key_dir))
        archive = bundle_dir.with_suffix(ARCHIVE_SUFFIX)
        for path in [bundle_dir, archive] if archive.is_file() else [bundle_dir]:
            try:
                check_signature(path, demo_key)
            except SignatureError:  # unsigned, or signed before the manifest or the key changed
                sign_bundle(path, private_key)
            report = verify_bundle(path)
            if not report.ok:
                raise BundleError(f"{path} failed verification: {'; '.join(report.problems)}")
            signed_by = check_signature(path, trusted)
    except BundleError as exc:
        raise DemoSigningError(f"signing the default bundle with the demo key of {key_dir} failed: {exc}") from exc
    print_wrapped(console, f"signed with demo key {signed_by} (not for production); verified")
    return trusted


def sample_images(workdir: Path, datasets: Path | None) -> list[Path]:
    """The CC0 fundus photo from scikit-image, plus, when the shared datasets are here, full-size
    camera JPEGs and one held-out test photo per labelled task: a positive for each condition and a
    negative (normal) one, so the screening table shows referred and non-referred photos alike."""
    from skimage import data as skimage_data

    samples = workdir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    retina = samples / "skimage-retina.jpg"
    if not retina.exists():
        cv2.imwrite(str(retina), cv2.cvtColor(skimage_data.retina(), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    images = [retina]
    if datasets is not None:
        images += camera_originals(datasets)
        test = [r for r in load_records(datasets) if r.split == "test"]
        for task in TASKS:
            for wanted in (task.is_positive, task.is_negative):
                found = next((r.path(datasets) for r in test if r.dataset == task.dataset and wanted(r)), None)
                if found is not None and found not in images:
                    images.append(found)
    return images


def camera_originals(datasets: Path) -> list[Path]:
    """Full-size camera JPEGs (HEI-MED's originals): what the latency tables time."""
    return sorted((datasets / "heimed" / "full").glob("*.jpg"))[:4]


def latency_tables(bundle_dir: Path, images: list[Path], rounds: int, console: Console) -> list[Table]:
    """Per-stage latency of every engine (``edge-retina bench latency``, without the cold-start runs)."""
    engines = select_engines(bundle_dir)
    with console.status(f"latency: {len(engines)} engines x {len(images)} images x {rounds} rounds, interleaved"):
        report = run_latency(bundle_dir, engines, images, iterations=rounds, streams=2, cold_runs=0).to_dict()
    headers, rows = system_table_rows(report)  # its first three columns: no cold-start runs here
    return [rich_table(f"Latency per stage, median ms ({len(report['images'])} images x {rounds} rounds, engines "
                       f"interleaved); speed-up against {report['baseline']}", *latency_table_rows(report),
                       width=console.width, details="edge-retina bench latency --json"),
            rich_table("Throughput", headers[:3], [r[:3] for r in rows], width=console.width)]


def parity_tables(teacher: Teacher, bundle_dir: Path, datasets: Path, limit: int, console: Console) -> list[Table]:
    """Zero-shot AUROC of the PyTorch student and every engine against the PyTorch teacher
    (``edge-retina bench parity``), per shared dataset's held-out split."""
    tables = []
    student = bundle_student(load_bundle(bundle_dir).manifest)  # None for a teacher bundle
    for dataset in SHARED_DATASETS:
        labelled = shared_dataset_labels(datasets, dataset, split="test", limit=limit)
        # Off when the output is not a terminal (a log file): a transient bar leaves a blank line there.
        with Progress(console=console, transient=True, disable=not console.is_terminal) as progress:
            task = progress.add_task(f"parity on {dataset}", total=len(labelled.paths))
            report = bundle_parity(bundle_dir, labelled, reference=teacher_embedder(teacher),
                                   host_models=[student] if student else [],
                                   progress=lambda n: progress.advance(task, n))
        titled = [table._replace(title=f"{dataset} (held-out test split) - {table.title}")
                  for table in parity_tables_rows(report)]
        tables += parity_console_tables(titled, width=console.width, details="edge-retina bench parity --json")
    return tables


def run_demo(config: DemoConfig) -> dict:
    console = Console()
    teacher = load_teacher("reference")
    print_wrapped(console, f"teacher: reference model {teacher.name} (sha256 {teacher.checkpoint_sha256[:12]}), "
                           f"input {teacher.input_spec.size[0]}x{teacher.input_spec.size[1]}; default student: "
                           f"{STUDENT_WEIGHTS.name} (distilled from it)")
    bundle_dir = default_bundle(teacher, config.workdir / "default-bundle", config.datasets, console, config.rebuild)
    trusted = sign_default_bundle(bundle_dir, config.workdir / DEMO_KEY_DIR, console)

    images = sample_images(config.workdir, config.datasets)
    with Screener.from_bundle(bundle_dir, trusted_keys=trusted) as screener:
        results = [screener.screen(p) for p in images]
        summary = summarise(results)
        print_results(console, results, screener.conditions, summary)
    timed = [images[0], *camera_originals(config.datasets)] if config.datasets is not None else images
    for table in latency_tables(bundle_dir, timed, config.latency_rounds, console):
        console.print(table)
    if config.datasets is None:
        console.print("[yellow]parity table skipped: no labelled datasets found (pass --datasets)[/]")
    else:
        for t in parity_tables(teacher, bundle_dir, config.datasets, config.parity_limit, console):
            console.print(t)
    cached = sum(s.size_bytes for s in user_caches.summarise())
    print_wrapped(console, f"\ncaches: {format_size(cached)} in {user_caches.user_cache_dir()}, reused by later "
                           "runs (edge-retina cache info; cache prune)")
    print_wrapped(console, f"next: edge-retina screen YOUR_FOLDER --bundle {bundle_dir} "
                           f"--trusted-keys {trusted.source}")
    return summary
