"""One-shot conversion: encoder -> FP32 ONNX -> calibration -> reference embeddings -> thresholds ->
engines per target (INT8 through the accuracy guard, at those thresholds) -> parity report -> bundle.

Each step is cached (``converters.step_cache``): a re-run after a failure resumes at the step that
failed, and a re-run with one more target builds only that target. A failing step raises
``ConvertError`` naming the step. Each engine is made by ``converters.engine_build.build_target``.
Any torch image encoder with an input spec goes through here (a teacher's, or a distilled student's:
the recipe's ``role`` names it in the bundle).
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from calibration.calibration_set import MANIFEST_NAME as CALIBRATION_MANIFEST
from calibration.calibration_set import CalibrationSet, build_calibration_set, held_out_sample, load_calibration_set
from calibration.sources import list_candidates
from converters.accuracy_guard import LADDER_REVISION, GuardLimits, guard_set
from converters.bundle_builder import (
    BuiltEngine,
    BundleRecipe,
    assemble_bundle,
    recipe_prompt_table,
    toolchain_versions,
)
from converters.distill.report import compute_profile, distillation_summary
from converters.engine_build import (
    FALLBACK_PRECISIONS,
    EngineTarget,
    TargetContext,
    build_target,
    embed_tensors,
    load_engine,
    save_engine,
)
from converters.export.onnx_fp32 import OPSET, export_onnx
from converters.parity_references import TEACHER_NAME, torch_embeddings
from converters.quantize.qat import QatArtefacts, QatConfig, cached_qat
from converters.quantize.registry import builder_revision
from converters.prompt_tables import DEFAULT_THRESHOLD
from converters.step_cache import StepCache, default_cache_dir, encoder_fingerprint, files_fingerprint
from converters.teachers import Teacher
from converters.thresholds import DEFAULT_TARGET_SENSITIVITY, choose_thresholds
from edge_retina.backends import create_runner
from edge_retina.bench.labels import LabelledImages
from edge_retina.bench.parity import compare_embeddings, prepare_pixels, prepare_tensors
from edge_retina.errors import EdgeRetinaError
from edge_retina.files import sha256_file
from edge_retina.preprocess import InputSpec, Preprocessor, pixels_key
from edge_retina.prompt_table import PromptTable
from edge_retina.user_caches import in_use

PARITY_REPORT = "reports/parity.json"
FP32_REFERENCE = "fp32 onnx"
STUDENT_FP32 = "student fp32 onnx"  # in a student bundle's report, beside the teacher
QAT_MODES = ("auto", "always", "never")
STEPS = ("export", "prompts", "calibration", "reference", "thresholds", "engines", "parity", "bundle")
#: The engine step's record format (``engine_build.save_engine``): part of its cache key.
ENGINE_RECORD_FORMAT = 2
#: The reference step's file format, part of its cache key. 2: the guard images' uint8 pixels, not
#: their float32 tensors (7,040 guard images: 0.78 GB on disk instead of 3.1 GB per conversion).
REFERENCE_FORMAT = 2

Progress = Callable[[str], None]


class ConvertError(EdgeRetinaError):
    def __init__(self, step: str, cause: BaseException | str):
        super().__init__(f"convert failed at step '{step}': {cause}")
        self.step = step


@dataclass
class ConvertSettings:
    targets: Sequence[EngineTarget]
    calibration: Sequence[Path] = ()  # images, folders, CSVs, or one calibration-set folder
    calibration_size: int = 300
    seed: int = 0
    validation: LabelledImages | None = None  # labelled: thresholds, the guard, parity
    # More labelled images for the accuracy guard alone (training photos are fine: it compares INT8 with
    # its own FP32 model). The guard checks the validation set and these, less the calibration images.
    guard_images: LabelledImages | None = None
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY
    limits: GuardLimits = GuardLimits()
    held_out_images: int = 64  # without labelled images: guard images drawn from the candidates not calibrated on
    cache_dir: Path = field(default_factory=default_cache_dir)
    threads: int | None = None
    # With labels, OpenVINO INT8 runs NNCF's accuracy-aware search (it reverts layers to float until the
    # AUROC drop is within the limit): the best INT8 model, at the cost of minutes per model. Off, the
    # accuracy guard alone decides (and falls back by excluding the most sensitive layers).
    openvino_accuracy_control: bool = True
    # Quantization-aware distillation (``converters.quantize.qat``): "auto" when post-training INT8
    # fails the guard even with layers excluded, "always" instead of post-training INT8, "never".
    qat: str = "auto"
    qat_config: QatConfig = QatConfig()

    def __post_init__(self) -> None:
        if self.qat not in QAT_MODES:
            raise ValueError(f"qat must be one of {QAT_MODES}, got {self.qat!r}")
        # Here, not at the calibration step: a conversion refused for it must not export first.
        int8 = [t.describe() for t in self.targets if t.precision == "int8"]
        if int8 and not self.calibration:
            raise ValueError(f"INT8 targets need calibration images (--calibration IMAGES_OR_CSV): "
                             f"{', '.join(int8)}")


@dataclass
class Reference:
    """The FP32 ONNX on the guard images; the first ``validated`` are the validation set (all of them
    without one), which chooses the thresholds and makes the parity report."""

    paths: list[Path]
    tensors: np.ndarray | None
    embeddings: np.ndarray | None
    labels: dict[str, np.ndarray] | None
    validated: int
    skipped: list

    def head(self) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """(tensors, embeddings, labels) of the validation images (views, not copies)."""
        n = self.validated
        return self.tensors[:n], self.embeddings[:n], {c: y[:n] for c, y in (self.labels or {}).items()}


class _Step:
    """``with _Step(name, progress) as step:`` prints the step, names it in any error, reports its outcome."""

    def __init__(self, name: str, progress: Progress):
        self.label, self.progress = f"[{STEPS.index(name) + 1}/{len(STEPS)}] {name}", progress
        self.name = name

    def __enter__(self) -> "_Step":
        self.progress(f"{self.label} ...")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and not isinstance(exc, ConvertError):
            raise ConvertError(self.name, exc) from exc
        return False

    def done(self, hit: bool, detail: str = "") -> None:
        self.progress(f"{self.label}: {'cached' if hit else 'done'}{f' ({detail})' if detail else ''}")


def convert(recipe: BundleRecipe, out_dir: Path, settings: ConvertSettings, *, archive: Path | None = None,
            command: str | None = None, progress: Progress = lambda message: None) -> Path:
    """Run every step (resuming from the cache) and write the bundle to ``out_dir``; returns it."""
    cache = StepCache(settings.cache_dir)
    with in_use(cache.root):  # `edge-retina cache prune` leaves the steps alone meanwhile
        with _Step("export", progress) as step:
            fp32_onnx, hit = _cached_export(recipe.encoder, recipe.input_spec, cache)
            onnx_sha = sha256_file(fp32_onnx)
            step.done(hit, f"sha256 {onnx_sha[:12]}")
        with _Step("prompts", progress) as step:
            table = recipe_prompt_table(recipe)
            step.done(False, f"{len(table.classes)} classes")
        with _Step("calibration", progress) as step:
            calibration = _calibration(recipe.input_spec, fp32_onnx, onnx_sha, settings, cache, step)
        with _Step("reference", progress) as step:
            reference = _reference(recipe.input_spec, fp32_onnx, onnx_sha, calibration, settings, cache, step)
        with _Step("thresholds", progress) as step:
            recipe = _thresholds(recipe, table, reference, settings, step)
        with _Step("engines", progress) as step:
            engines = _engines(recipe, table, fp32_onnx, onnx_sha, calibration, reference, settings, cache, step)
        with _Step("parity", progress) as step:
            recipe, extra_files = _parity(recipe, table, fp32_onnx, reference, engines, settings, cache, step)
        with _Step("bundle", progress) as step:
            bundle = assemble_bundle(recipe, engines, out_dir, table=table, extra_files=extra_files, archive=archive,
                                     command=command)
            step.done(False, str(bundle))
        return bundle


def _calibration(spec: InputSpec, fp32_onnx: Path, onnx_sha: str, settings: ConvertSettings, cache: StepCache,
                 step: _Step) -> CalibrationSet | None:
    sources = [Path(s) for s in settings.calibration]
    wants_int8 = any(t.precision == "int8" for t in settings.targets)
    guarded = any(t.precision != "fp32" for t in settings.targets)
    if not wants_int8 and not (guarded and sources and settings.validation is None):
        step.done(False, "skipped: no INT8 target")
        return None
    if len(sources) == 1 and (sources[0] / CALIBRATION_MANIFEST).is_file():
        calibration = load_calibration_set(sources[0], spec=spec)
        step.done(True, f"{calibration.size} images from {sources[0]}")
        return calibration
    candidates = list_candidates(sources)

    def make(d: Path) -> None:
        with create_runner("onnxruntime", fp32_onnx, precision="fp32", threads=settings.threads) as runner:
            build_calibration_set(candidates, d, spec, size=settings.calibration_size, seed=settings.seed,
                                  embed=runner.infer, model_sha256=onnx_sha)

    directory, hit = cache.run("calibration", [onnx_sha, pixels_key(spec), settings.calibration_size, settings.seed,
                                               files_fingerprint(c.path for c in candidates)], make)
    calibration = load_calibration_set(directory, spec=spec)
    step.done(hit, f"{calibration.size} images, {calibration.method}")
    return calibration


def _reference(spec: InputSpec, fp32_onnx: Path, onnx_sha: str, calibration: CalibrationSet | None,
               settings: ConvertSettings, cache: StepCache, step: _Step) -> Reference:
    """The guard images (``accuracy_guard.guard_set``; without labels, candidates not calibrated on),
    prepared once and embedded by the FP32 ONNX."""
    labels = None
    if settings.validation is not None or settings.guard_images is not None:
        labelled, validated = guard_set(settings.validation, settings.guard_images, calibration)
        paths, labels = labelled.paths, labelled.labels
        if settings.validation is None:  # no thresholds to choose; the parity report shows every image
            validated = len(paths)
    else:
        paths = [] if calibration is None else held_out_sample(calibration.held_out, settings.held_out_images,
                                                                settings.seed)
        validated = len(paths)
    if any(t.precision != "fp32" for t in settings.targets) and not paths:
        raise ConvertError("reference", "the accuracy guard needs held-out images: give a labelled validation "
                                        "set, or more calibration candidates than the calibration size")
    if not paths:
        step.done(False, "skipped: no held-out images")
        return Reference([], None, None, None, 0, [])

    preprocessor = Preprocessor(spec)

    def make(d: Path) -> None:
        pixels, kept, skipped = prepare_pixels(preprocessor, paths)
        embeddings = embed_tensors("onnxruntime", fp32_onnx, "fp32", preprocessor.normalise(pixels), settings.threads)
        np.savez(d / "reference.npz", pixels=pixels, embeddings=embeddings, kept=np.asarray(kept, np.int64))
        (d / "skipped.json").write_text(json.dumps(skipped))

    directory, hit = cache.run("reference", [REFERENCE_FORMAT, onnx_sha, pixels_key(spec), files_fingerprint(paths)],
                               make)
    with np.load(directory / "reference.npz") as data:
        tensors, embeddings, kept = preprocessor.normalise(data["pixels"]), data["embeddings"], data["kept"].tolist()
    skipped = json.loads((directory / "skipped.json").read_text())
    reference = Reference([paths[i] for i in kept], tensors, embeddings,
                          None if labels is None else {c: y[kept] for c, y in labels.items()},
                          sum(i < validated for i in kept), skipped)
    step.done(hit, f"{len(kept)} guard images ({reference.validated} for thresholds and parity), "
                   f"{len(skipped)} unusable")
    return reference


def _thresholds(recipe: BundleRecipe, table: PromptTable, reference: Reference, settings: ConvertSettings,
                step: _Step) -> BundleRecipe:
    if settings.validation is None or not reference.validated:
        step.done(False, "skipped: no labelled validation set")
        return recipe
    _, embeddings, labels = reference.head()
    choices = choose_thresholds(table, embeddings, labels, settings.target_sensitivity)
    step.done(False, ", ".join(f"{c} {ch.threshold:.3f}" for c, ch in choices.items()))
    return replace(recipe, thresholds={c: (ch.threshold, ch.source()) for c, ch in choices.items()})


def _engines(recipe: BundleRecipe, table: PromptTable, fp32_onnx: Path, onnx_sha: str,
             calibration: CalibrationSet | None, reference: Reference, settings: ConvertSettings, cache: StepCache,
             step: _Step) -> list[BuiltEngine]:
    spec = recipe.input_spec
    too_large = [t for t in settings.targets if t.max_input_side is not None and max(spec.size) > t.max_input_side]
    if too_large:
        raise ConvertError("engines", f"the model input {spec.size[0]}x{spec.size[1]} is larger than "
                                      + ", ".join(f"{t.device_profile or t.describe()} allows ({t.max_input_side})"
                                                  for t in too_large))
    thresholds = {c.name: recipe.thresholds.get(c.name, (DEFAULT_THRESHOLD,))[0]
                  for c in recipe.conditions if c.name != table.normal_class}

    # QAT also trains on the calibration candidates that were not chosen, unless the guard checks on them.
    guard_images = {Path(p).resolve() for p in reference.paths}
    qat_training = [] if calibration is None else [p for p in calibration.held_out if p.resolve() not in guard_images]

    @functools.cache
    def qat(excluded: tuple[str, ...]) -> QatArtefacts:
        return cached_qat(cache, recipe.encoder, spec, calibration, table, fp32_onnx, settings.qat_config,
                          lambda message: step.progress(f"      {message}"), training_images=qat_training,
                          excluded_nodes=excluded)

    context = TargetContext(fp32_onnx, recipe.role, calibration, reference.tensors, reference.embeddings, table,
                            reference.labels, thresholds, settings.limits, toolchain_versions(), settings.threads,
                            lambda message: step.progress(f"    {message}"), settings.openvino_accuracy_control,
                            qat=None if settings.qat == "never" or calibration is None else lambda x: qat(tuple(x)),
                            qat_first=settings.qat == "always")
    engines: list[BuiltEngine] = []
    for target in settings.targets:
        step.progress(f"    {target.describe()}")
        parts = [ENGINE_RECORD_FORMAT, target.describe(), dict(target.options), onnx_sha, recipe.role,
                 settings.limits.to_dict(), builder_revision(target.backend, target.precision), LADDER_REVISION]
        if target.precision != "fp32":
            parts += [FALLBACK_PRECISIONS[target.backend], calibration.manifest_sha256 if calibration else None,
                      hashlib.sha256(reference.tensors.tobytes()).hexdigest(),
                      None if reference.labels is None else {c: y.tolist() for c, y in reference.labels.items()},
                      thresholds]
        if target.backend == "openvino" and target.precision == "int8":
            parts.append({"accuracy_control": settings.openvino_accuracy_control})
        if target.precision == "int8":
            parts.append({"qat": settings.qat, "config": settings.qat_config.to_dict()})

        def make(d: Path, target: EngineTarget = target) -> None:
            save_engine(build_target(target.backend, target.precision, target.options, context, d), d)

        directory, hit = cache.run("engine", parts, make)
        built = load_engine(directory)
        if target.device_profile is not None:
            built = replace(built, entry=replace(built.entry, device_profile=target.device_profile))
        duplicate = next((e for e in engines if set(e.files) & set(built.files)), None)
        if duplicate is not None:
            step.progress(f"    {target.describe()} shipped as {built.entry.precision}, which the bundle already "
                          f"has ({duplicate.entry.describe()}): not added twice")
            continue
        engines.append(built)
        fell_back = f", fell back to {built.entry.precision}" if built.entry.fallback else ""
        step.progress(f"    {target.describe()}: {'cached' if hit else 'built'}{fell_back}")
    step.done(False, ", ".join(e.entry.describe() for e in engines))
    return engines


def _parity(recipe: BundleRecipe, table: PromptTable, fp32_onnx: Path, reference: Reference,
            engines: list[BuiltEngine], settings: ConvertSettings, cache: StepCache,
            step: _Step) -> tuple[BundleRecipe, dict[str, bytes]]:
    """``reports/parity.json``: every engine (and a student's teacher) on the validation images; and a
    student's distillation summary in the recipe."""
    if reference.tensors is None:
        step.done(False, "skipped: no held-out images")
        return recipe, {}
    tensors, fp32_embeddings, labels = reference.head()
    embeddings = {}
    reference_name = fp32_name = FP32_REFERENCE
    if recipe.teacher is not None:  # a student: teacher, student and engines side by side
        reference_name, fp32_name = TEACHER_NAME, STUDENT_FP32
        embeddings[TEACHER_NAME] = _teacher_embeddings(recipe.teacher, reference.paths[:reference.validated], cache)
    embeddings[fp32_name] = fp32_embeddings
    for engine in engines:
        entry = engine.entry
        embeddings[entry.describe()] = embed_tensors(entry.backend, engine.files[entry.primary_file], entry.precision,
                                                     tensors, settings.threads)
    thresholds = {c: t for c, (t, _) in recipe.thresholds.items()}
    parity = compare_embeddings(reference_name, embeddings, labels, table, thresholds, seed=settings.seed,
                                skipped=reference.skipped)
    worst = {name: float(np.min(values)) for name, values in parity.cosine.items()}
    step.done(False, "min cosine " + ", ".join(f"{n} {v:.4f}" for n, v in worst.items()))
    if recipe.teacher is not None and recipe.student is not None:
        profile = compute_profile(recipe.teacher, recipe.encoder, recipe.input_spec, onnx_paths={
            "student": fp32_onnx,
            "teacher": _cached_export(recipe.teacher.image_encoder, recipe.teacher.input_spec, cache)[0]})
        summary = distillation_summary(parity, TEACHER_NAME, STUDENT_FP32, profile)
        recipe = replace(recipe, student=replace(recipe.student, distillation=summary))
        retained = [f"{c} {r['retention']:.2f}" for c, r in summary["conditions"].items() if r["retention"] is not None]
        step.progress(f"    student: {profile['speedup']:.1f}x faster than its teacher; retention "
                      + (", ".join(retained) or "n/a (no labels)"))
    return recipe, {PARITY_REPORT: (json.dumps(parity.to_dict(), indent=2, default=float) + "\n").encode()}


def _cached_export(encoder: torch.nn.Module, spec: InputSpec, cache: StepCache) -> tuple[Path, bool]:
    """The encoder's FP32 ONNX from the step cache (one export per weights, spec, opset and torch),
    and whether it was a hit: a student bundle's convert finds its teacher's export there too."""
    directory, hit = cache.run("export", [encoder_fingerprint(encoder), spec.sha256(), OPSET, torch.__version__],
                               lambda d: export_onnx(encoder, spec.size, d / "encoder.onnx"))
    return directory / "encoder.onnx", hit


def _teacher_embeddings(teacher: Teacher, paths: list[Path], cache: StepCache) -> np.ndarray:
    """A student's teacher on the held-out images, prepared with the teacher's own input spec."""
    def make(d: Path) -> None:
        tensors, kept, _ = prepare_tensors(Preprocessor(teacher.input_spec), paths)
        if len(kept) != len(paths):
            raise ConvertError("parity", "some held-out images the student could use failed with the teacher's spec")
        np.save(d / "embeddings.npy", torch_embeddings(teacher.image_encoder.eval(), tensors))

    directory, _ = cache.run("teacher-embeddings", [teacher.checkpoint_sha256, pixels_key(teacher.input_spec),
                                                    files_fingerprint(paths)], make)
    return np.load(directory / "embeddings.npy")
