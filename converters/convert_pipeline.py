"""One-shot conversion: encoder -> FP32 ONNX -> calibration -> thresholds -> engines per target (INT8
through the accuracy guard, at those thresholds) -> parity report -> bundle.

Every step writes into ``<cache_dir>/<step>-<key>/``, where the key is a hash of the content of the
step's inputs (the encoder's weights, the ONNX file's sha256, the calibration manifest's sha256,
the image files' sizes and dates, the settings). A step whose folder is complete is not run again,
so a re-run after a failure resumes at the step that failed, and a re-run with one more target
builds only that target. A failing step raises ``ConvertError`` naming the step.

``build_target(backend, precision, options, context)`` makes one engine; ``convert`` calls it per
requested target, and device profiles (``devices.build_plan``) can drive it the same way. Any torch
image encoder with an input spec goes through here (a teacher's, or a distilled student's: the
recipe's ``role`` names it in the bundle).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from calibration.calibration_set import (
    MANIFEST_NAME as CALIBRATION_MANIFEST,
)
from calibration.calibration_set import (
    CalibrationSet,
    build_calibration_set,
    held_out_sample,
    load_calibration_set,
)
from calibration.reader import ArrayCalibrationReader
from calibration.sources import list_candidates
from converters.accuracy_guard import GuardLimits, guard_set, guarded_build, layer_sensitivity
from converters.bundle_builder import (
    BuiltEngine,
    BundleRecipe,
    assemble_bundle,
    engine_stem,
    fp32_engine,
    recipe_prompt_table,
    toolchain_versions,
)
from converters.distill.report import compute_profile, distillation_summary
from converters.export.onnx_fp32 import OPSET, export_onnx
from converters.export.openvino_ir import onnx_to_openvino_ir
from converters.parity import TEACHER_NAME, torch_embeddings
from converters.prompt_tables import DEFAULT_THRESHOLD
from converters.teachers import Teacher
from converters.thresholds import DEFAULT_TARGET_SENSITIVITY, choose_thresholds
from edge_retina.backends import create_runner
from edge_retina.bench.labels import LabelledImages
from edge_retina.bench.parity import compare_embeddings, prepare_tensors
from edge_retina.bundle import CalibrationInfo, EngineEntry
from edge_retina.errors import EdgeRetinaError
from edge_retina.files import sha256_file
from edge_retina.preprocess import InputSpec, Preprocessor, pixels_key
from edge_retina.prompts import PromptTable

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
#: FP32 is the reference and ships unguarded; FP16 and INT8 go through the accuracy guard.
PRECISIONS = ("fp32", "fp16", "int8")
#: Where the guard falls back to, per backend, in order, after INT8 layer exclusion. ONNX Runtime's
#: CPU provider goes straight to FP32: it runs an FP16 graph by casting around the ops it has no FP16
#: kernel for, slower than FP32 (the default student here: 4.6 ms against 2.0 ms per image).
FALLBACK_PRECISIONS = {"onnxruntime": ("fp32",), "openvino": ("fp16", "fp32"), "tensorrt": ("fp16", "fp32")}
#: Calibration images the per-layer sensitivity analysis runs (it keeps every activation in memory).
SENSITIVITY_IMAGES = 16
PARITY_REPORT = "reports/parity.json"
FP32_REFERENCE = "fp32 onnx"
STUDENT_FP32 = "student fp32 onnx"  # in a student bundle's report, beside the teacher
#: Bump when a step's output format changes, so old cache entries are not reused.
CACHE_VERSION = 1

Progress = Callable[[str], None]


class ConvertError(EdgeRetinaError):
    def __init__(self, step: str, cause: BaseException | str):
        super().__init__(f"convert failed at step '{step}': {cause}")
        self.step = step


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edge-retina" / "convert"


@dataclass(frozen=True)
class EngineTarget:
    backend: str
    precision: str
    options: Mapping[str, Any] = field(default_factory=dict)
    device_profile: str | None = None  # recorded in the manifest (devices.build_plan sets it)
    max_input_side: int | None = None  # the device's limit on the model input (a profile's max_input_side)

    @classmethod
    def for_devices(cls, profiles: Sequence[str], *, role: str) -> list["EngineTarget"]:
        """Exactly the engines ``profiles`` need (``edge-retina devices list``), one per distinct artefact."""
        import devices

        return [cls(p.backend, p.precision, dict(p.options), p.device_profile, p.max_input_side)
                for p in devices.build_plan(profiles, role=role)]

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose from {BACKENDS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {PRECISIONS}")

    def describe(self) -> str:
        return f"{self.backend}:{self.precision}"


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


class StepCache:
    """``<root>/<step>-<key>/`` folders, complete once their marker file exists."""

    MARKER = ".complete"

    def __init__(self, root: Path):
        self.root = Path(root)

    @staticmethod
    def key(step: str, parts: Any) -> str:
        blob = json.dumps([CACHE_VERSION, step, parts], sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def run(self, step: str, parts: Any, make: Callable[[Path], None]) -> tuple[Path, bool]:
        """(folder, whether it came from the cache). ``make`` fills a fresh folder; only a ``make``
        that returns turns it into the step's folder, so a failure leaves nothing to reuse."""
        final = self.root / f"{step}-{self.key(step, parts)}"
        if (final / self.MARKER).is_file():
            return final, True
        # One partial folder per process: two conversions sharing a cache never write into each other's.
        partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            make(partial)
            (partial / self.MARKER).write_text("")
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
        except OSError:
            if not (final / self.MARKER).is_file():  # not another process finishing the same step first
                raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return final, False


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """sha256 of the encoder's class and weights: the export step's key."""
    digest = hashlib.sha256(f"{type(encoder).__module__}.{type(encoder).__qualname__}".encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def files_fingerprint(paths: Iterable[Path]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) per file: cheap, and changes when a file does."""
    result = []
    for path in paths:
        stat = Path(path).stat()
        result.append((str(path), stat.st_size, stat.st_mtime_ns))
    return result


@dataclass
class TargetContext:
    """What every target's build needs, prepared once by ``convert``."""

    fp32_onnx: Path
    role: str
    calibration: CalibrationSet | None
    eval_tensors: np.ndarray  # the guard images (none of them calibrated on)
    fp32_embeddings: np.ndarray  # the FP32 ONNX's embeddings of eval_tensors
    table: PromptTable
    labels: dict[str, np.ndarray] | None
    thresholds: dict[str, float]  # the bundle's referral thresholds: the guard's referral agreement
    limits: GuardLimits
    toolchain: dict[str, str]
    threads: int | None = None
    progress: Progress | None = None
    openvino_accuracy_control: bool = True


def _embed(backend: str, path: Path, precision: str, tensors: np.ndarray, threads: int | None) -> np.ndarray:
    with create_runner(backend, path, precision=precision, threads=threads) as runner:
        return np.concatenate([runner.infer(tensors[s:s + 16]) for s in range(0, len(tensors), 16)])


def _mean_auroc_metric(table: PromptTable, labels: dict[str, np.ndarray]) -> Callable[[np.ndarray], float]:
    from edge_retina.bench.metrics import auroc

    def metric(embeddings: np.ndarray) -> float:
        scores = table.score(embeddings).condition_probabilities
        values = []
        for condition, y in labels.items():
            labelled = ~np.isnan(y)
            if condition in scores and len(np.unique(y[labelled])) == 2:
                values.append(auroc(y[labelled], scores[condition][labelled]))
        return float(np.mean(values))

    return metric


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


def _float16_onnx(fp32_onnx: Path, out: Path) -> Path:
    """FP16 weights and compute with FP32 input/output (ONNX Runtime's converter; LayerNorm stays one op)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(fp32_onnx)), keep_io_types=True), str(out))
    return out


def build_target(backend: str, precision: str, options: Mapping[str, Any], context: TargetContext,
                 work: Path) -> BuiltEngine:
    """One engine for ``backend`` at ``precision``, its files written under ``work``.

    FP32 is the reference and ships as is; FP16 and INT8 go through the accuracy guard. ``options``
    (device profiles' converter options): ``high_precision`` ("fp32"/"fp16") for TensorRT INT8,
    ``reduce_range`` (7-bit weights) for ONNX Runtime INT8.
    """
    fp32_onnx = context.fp32_onnx
    if precision == "fp32":
        if backend == "openvino":
            return fp32_engine(context.role, backend, fp32_onnx, work, context.toolchain)
        # ONNX Runtime and TensorRT (built on the device) take the FP32 ONNX; the cache folder owns its copy.
        stem = engine_stem(context.role, backend, "fp32")
        copy = Path(shutil.copyfile(fp32_onnx, work / "model.onnx"))
        return BuiltEngine(EngineEntry(backend=backend, precision="fp32", role=context.role, files=[f"{stem}.onnx"],
                                       toolchain=context.toolchain), {f"{stem}.onnx": copy})
    calibration = context.calibration
    if precision == "int8" and calibration is None:
        raise ValueError("INT8 needs a calibration set")
    if context.eval_tensors is None:
        raise ValueError(f"the accuracy guard needs held-out images to check {precision} against FP32")
    attempt_dirs: list[Path] = []
    run_backend = "onnxruntime" if backend == "tensorrt" else backend  # a Q/DQ ONNX is checked in ORT here

    def fresh_dir() -> Path:
        directory = work / f"attempt-{len(attempt_dirs)}"
        directory.mkdir()
        attempt_dirs.append(directory)
        return directory

    def build(prec: str, excluded: Sequence[str]) -> tuple[str, list[Path]]:
        directory = fresh_dir()
        if backend == "openvino":
            if prec == "int8":
                from converters.quantize.openvino_nncf import (
                    AccuracyControl,
                    quantize_openvino,
                )

                control = None
                if context.labels and context.openvino_accuracy_control:
                    control = AccuracyControl(context.eval_tensors, _mean_auroc_metric(context.table, context.labels),
                                              max_drop=context.limits.auroc_margin)
                return prec, quantize_openvino(fp32_onnx, directory / "model.xml", calibration.tensors,
                                               ignored_nodes=excluded, accuracy_control=control)
            if prec == "fp16":
                import openvino as ov

                xml = directory / "model.xml"
                ov.save_model(ov.convert_model(str(fp32_onnx)), str(xml), compress_to_fp16=True)
                return prec, [xml, xml.with_suffix(".bin")]
            return prec, onnx_to_openvino_ir(fp32_onnx, directory / "model.xml")
        out = directory / "model.onnx"
        if prec == "fp32":
            return prec, [Path(shutil.copyfile(fp32_onnx, out))]
        if prec == "fp16":
            return prec, [_float16_onnx(fp32_onnx, out)]
        if backend == "onnxruntime":
            from converters.quantize.onnxruntime_qdq import quantize_onnxruntime

            return prec, [quantize_onnxruntime(fp32_onnx, out, ArrayCalibrationReader(calibration.tensors),
                                               nodes_to_exclude=excluded,
                                               reduce_range=bool(options.get("reduce_range", False)))]
        from converters.quantize.tensorrt_modelopt import quantize_tensorrt_qdq

        return prec, [quantize_tensorrt_qdq(fp32_onnx, out, calibration.tensors, nodes_to_exclude=excluded,
                                            high_precision=options.get("high_precision", "fp32"))]

    def embed(artefact: tuple[str, list[Path]]) -> np.ndarray:
        prec, files = artefact
        return _embed(run_backend, files[0], prec, context.eval_tensors, context.threads)

    def sensitivity(artefact: tuple[str, list[Path]]) -> list[str]:
        qdq = artefact[1][0]
        if backend == "openvino":  # rank layers on an ONNX Runtime QDQ proxy: same node names
            from converters.quantize.onnxruntime_qdq import quantize_onnxruntime

            qdq = quantize_onnxruntime(fp32_onnx, fresh_dir() / "proxy.onnx", ArrayCalibrationReader(calibration.tensors))
        return [name for name, _ in layer_sensitivity(fp32_onnx, qdq, calibration.tensors[:SENSITIVITY_IMAGES])]

    result = guarded_build(build, embed, context.fp32_embeddings, sensitivity, table=context.table,
                           thresholds=context.thresholds, labels=context.labels, limits=context.limits,
                           requested=precision,
                           fallback_precisions=FALLBACK_PRECISIONS[backend], progress=context.progress)
    shipped_precision, shipped_files = result.artefact
    for directory in attempt_dirs:  # keep only what ships
        if directory != shipped_files[0].parent:
            shutil.rmtree(directory)
    stem = engine_stem(context.role, backend, shipped_precision)
    files = {f"{stem}{path.suffix}": path for path in shipped_files}
    toolchain = dict(context.toolchain)
    if backend == "openvino" and shipped_precision == "int8":
        import nncf

        toolchain["nncf"] = nncf.__version__
    if backend == "tensorrt" and shipped_precision == "int8":
        from importlib.metadata import version

        toolchain["nvidia-modelopt"] = version("nvidia-modelopt")
    entry = EngineEntry(
        backend=backend, precision=shipped_precision, role=context.role, files=list(files), toolchain=toolchain,
        calibration=(CalibrationInfo(calibration.manifest_sha256, calibration.size, calibration.method)
                     if shipped_precision == "int8" else None),
        notes=result.notes(context.limits), fallback=result.fallback_record(),
    )
    return BuiltEngine(entry, files)


def _record(engine: BuiltEngine, directory: Path) -> None:
    e = engine.entry
    record = {
        "entry": {"backend": e.backend, "precision": e.precision, "role": e.role, "files": list(e.files),
                  "toolchain": dict(e.toolchain), "notes": e.notes, "fallback": e.fallback,
                  "calibration": None if e.calibration is None else vars(e.calibration)},
        "files": {name: str(path.relative_to(directory)) for name, path in engine.files.items()},
    }
    (directory / "engine.json").write_text(json.dumps(record, indent=2, default=float))


def _load_record(directory: Path) -> BuiltEngine:
    record = json.loads((directory / "engine.json").read_text())
    e = record["entry"]
    calibration = CalibrationInfo(**e["calibration"]) if e["calibration"] else None
    entry = EngineEntry(backend=e["backend"], precision=e["precision"], role=e["role"], files=e["files"],
                        toolchain=e["toolchain"], calibration=calibration, notes=e["notes"], fallback=e["fallback"])
    return BuiltEngine(entry, {name: directory / rel for name, rel in record["files"].items()})


def convert(recipe: BundleRecipe, out_dir: Path, settings: ConvertSettings, *, archive: Path | None = None,
            command: str | None = None, progress: Progress = lambda message: None) -> Path:
    """Run every step (resuming from the cache) and write the bundle to ``out_dir``; returns it."""
    cache = StepCache(settings.cache_dir)
    spec = recipe.input_spec
    wants_int8 = any(t.precision == "int8" for t in settings.targets)
    guarded = any(t.precision != "fp32" for t in settings.targets)
    steps = ["export", "prompts", "calibration", "reference", "thresholds", "engines", "parity", "bundle"]
    numbered = {name: f"[{i}/{len(steps)}] {name}" for i, name in enumerate(steps, 1)}

    def step(name: str):
        class Step:
            def __enter__(self) -> "Step":
                progress(f"{numbered[name]} ...")
                return self

            def __exit__(self, exc_type, exc, tb) -> bool:
                if exc is not None and not isinstance(exc, ConvertError):
                    raise ConvertError(name, exc) from exc
                return False

        return Step()

    def report(name: str, hit: bool, detail: str = "") -> None:
        progress(f"{numbered[name]}: {'cached' if hit else 'done'}{f' ({detail})' if detail else ''}")

    with step("export"):
        fp32_onnx, hit = _cached_export(recipe.encoder, spec, cache)
        onnx_sha = sha256_file(fp32_onnx)
        report("export", hit, f"sha256 {onnx_sha[:12]}")

    with step("prompts"):
        table = recipe_prompt_table(recipe)
        report("prompts", False, f"{len(table.classes)} classes")

    calibration: CalibrationSet | None = None
    with step("calibration"):
        sources = [Path(s) for s in settings.calibration]
        if not wants_int8 and not (guarded and sources and settings.validation is None):
            report("calibration", False, "skipped: no INT8 target")
        elif not sources:
            raise ConvertError("calibration", "INT8 targets need calibration images (--calibration IMAGES_OR_CSV)")
        elif len(sources) == 1 and (sources[0] / CALIBRATION_MANIFEST).is_file():
            calibration = load_calibration_set(sources[0], spec=spec)
            report("calibration", True, f"{calibration.size} images from {sources[0]}")
        else:
            candidates = list_candidates(sources)

            def make_calibration(d: Path) -> None:
                with create_runner("onnxruntime", fp32_onnx, precision="fp32", threads=settings.threads) as runner:
                    build_calibration_set(candidates, d, spec, size=settings.calibration_size, seed=settings.seed,
                                          embed=runner.infer, model_sha256=onnx_sha)

            calibration_dir, hit = cache.run(
                "calibration", [onnx_sha, pixels_key(spec), settings.calibration_size, settings.seed,
                                files_fingerprint(c.path for c in candidates)], make_calibration)
            calibration = load_calibration_set(calibration_dir, spec=spec)
            report("calibration", hit, f"{calibration.size} images, {calibration.method}")

    with step("reference"):
        labels = None
        if settings.validation is not None or settings.guard_images is not None:
            labelled, validated = guard_set(settings.validation, settings.guard_images, calibration)
            eval_paths, labels = labelled.paths, labelled.labels
            if settings.validation is None:  # no thresholds to choose; the parity report shows every image
                validated = len(eval_paths)
        elif calibration is not None:
            eval_paths = held_out_sample(calibration.held_out, settings.held_out_images, settings.seed)
            validated = len(eval_paths)
        else:
            eval_paths, validated = [], 0
        if guarded and not eval_paths:
            raise ConvertError("reference", "the accuracy guard needs held-out images: give a labelled validation "
                                            "set, or more calibration candidates than the calibration size")

        def make_reference(d: Path) -> None:
            tensors, kept, skipped = prepare_tensors(Preprocessor(spec), eval_paths)
            embeddings = _embed("onnxruntime", fp32_onnx, "fp32", tensors, settings.threads)
            np.savez(d / "reference.npz", tensors=tensors, embeddings=embeddings, kept=np.asarray(kept, np.int64))
            (d / "skipped.json").write_text(json.dumps(skipped))

        eval_tensors = fp32_embeddings = None
        if eval_paths:
            reference_dir, hit = cache.run("reference", [onnx_sha, pixels_key(spec), files_fingerprint(eval_paths)],
                                           make_reference)
            with np.load(reference_dir / "reference.npz") as data:
                eval_tensors, fp32_embeddings, kept = data["tensors"], data["embeddings"], data["kept"].tolist()
            skipped = json.loads((reference_dir / "skipped.json").read_text())
            if labels is not None:
                labels = {c: y[kept] for c, y in labels.items()}
            # The first ``validated`` images (the validation set) choose the thresholds and make the parity
            # report; every image checks the engines.
            validated = sum(i < validated for i in kept)
            report("reference", hit, f"{len(kept)} guard images ({validated} for thresholds and parity), "
                                    f"{len(skipped)} unusable")
        else:
            skipped = []
            report("reference", False, "skipped: no held-out images")

    with step("thresholds"):
        if settings.validation is not None and validated:
            choices = choose_thresholds(table, fp32_embeddings[:validated],
                                        {c: y[:validated] for c, y in labels.items()}, settings.target_sensitivity)
            recipe = replace(recipe, thresholds={c: (ch.threshold, ch.source()) for c, ch in choices.items()})
            report("thresholds", False, ", ".join(f"{c} {ch.threshold:.3f}" for c, ch in choices.items()))
        else:
            report("thresholds", False, "skipped: no labelled validation set")
        referral_thresholds = {c.name: recipe.thresholds.get(c.name, (DEFAULT_THRESHOLD,))[0]
                               for c in recipe.conditions if c.name != table.normal_class}

    engines: list[BuiltEngine] = []
    with step("engines"):
        too_large = [t for t in settings.targets if t.max_input_side is not None and max(spec.size) > t.max_input_side]
        if too_large:
            raise ConvertError("engines", f"the model input {spec.size[0]}x{spec.size[1]} is larger than "
                                          + ", ".join(f"{t.device_profile or t.describe()} allows ({t.max_input_side})"
                                                      for t in too_large))
        context = TargetContext(fp32_onnx, recipe.role, calibration, eval_tensors, fp32_embeddings, table, labels,
                                referral_thresholds, settings.limits, toolchain_versions(), settings.threads,
                                lambda message: progress(f"    {message}"), settings.openvino_accuracy_control)
        for target in settings.targets:
            progress(f"    {target.describe()}")
            parts = [target.describe(), dict(target.options), onnx_sha, recipe.role, settings.limits.to_dict()]
            if target.precision != "fp32":
                parts += [FALLBACK_PRECISIONS[target.backend], calibration.manifest_sha256 if calibration else None,
                          hashlib.sha256(eval_tensors.tobytes()).hexdigest(),
                          None if labels is None else {c: y.tolist() for c, y in labels.items()},
                          referral_thresholds]
            if target.backend == "openvino" and target.precision == "int8":
                parts.append({"accuracy_control": settings.openvino_accuracy_control})

            def make_engine(d: Path, target: EngineTarget = target) -> None:
                _record(build_target(target.backend, target.precision, target.options, context, d), d)

            engine_dir, hit = cache.run("engine", parts, make_engine)
            built = _load_record(engine_dir)
            if target.device_profile is not None:
                built = replace(built, entry=replace(built.entry, device_profile=target.device_profile))
            duplicate = next((e for e in engines if set(e.files) & set(built.files)), None)
            if duplicate is not None:
                progress(f"    {target.describe()} shipped as {built.entry.precision}, which the bundle already "
                         f"has ({duplicate.entry.describe()}): not added twice")
                continue
            engines.append(built)
            fell_back = f", fell back to {built.entry.precision}" if built.entry.fallback else ""
            progress(f"    {target.describe()}: {'cached' if hit else 'built'}{fell_back}")
        report("engines", False, ", ".join(e.entry.describe() for e in engines))

    extra_files: dict[str, bytes] = {}
    with step("parity"):
        if eval_tensors is not None:
            parity_tensors = eval_tensors[:validated]
            parity_labels = {c: y[:validated] for c, y in (labels or {}).items()}
            embeddings = {}
            reference = fp32_name = FP32_REFERENCE
            if recipe.teacher is not None:  # a student: teacher, student and engines side by side
                reference, fp32_name = TEACHER_NAME, STUDENT_FP32
                embeddings[TEACHER_NAME] = _teacher_embeddings(recipe.teacher, [eval_paths[i] for i in kept[:validated]],
                                                               cache)
            embeddings[fp32_name] = fp32_embeddings[:validated]
            for engine in engines:
                run_backend = "onnxruntime" if engine.entry.backend == "tensorrt" else engine.entry.backend
                embeddings[engine.entry.describe()] = _embed(run_backend, engine.files[engine.entry.primary_file],
                                                             engine.entry.precision, parity_tensors, settings.threads)
            thresholds = {c: t for c, (t, _) in recipe.thresholds.items()}
            parity = compare_embeddings(reference, embeddings, parity_labels, table, thresholds,
                                        seed=settings.seed, skipped=skipped)
            extra_files[PARITY_REPORT] = (json.dumps(parity.to_dict(), indent=2, default=float) + "\n").encode()
            worst = {name: float(np.min(values)) for name, values in parity.cosine.items()}
            report("parity", False, "min cosine " + ", ".join(f"{n} {v:.4f}" for n, v in worst.items()))
            if recipe.teacher is not None and recipe.student is not None:
                profile = compute_profile(recipe.teacher, recipe.encoder, spec, onnx_paths={
                    "student": fp32_onnx,
                    "teacher": _cached_export(recipe.teacher.image_encoder, recipe.teacher.input_spec, cache)[0]})
                summary = distillation_summary(parity, TEACHER_NAME, STUDENT_FP32, profile)
                recipe = replace(recipe, student=replace(recipe.student, distillation=summary))
                retained = [f"{c} {r['retention']:.2f}" for c, r in summary["conditions"].items()
                            if r["retention"] is not None]
                progress(f"    student: {profile['speedup']:.1f}x faster than its teacher; retention "
                         + (", ".join(retained) or "n/a (no labels)"))
        else:
            report("parity", False, "skipped: no held-out images")

    with step("bundle"):
        bundle = assemble_bundle(recipe, engines, out_dir, table=table, extra_files=extra_files, archive=archive,
                                 command=command)
        report("bundle", False, str(bundle))
    return bundle
