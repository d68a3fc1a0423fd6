"""One engine for one target: built by the quantizer registry, checked by the accuracy guard, recorded
in the step cache as the manifest writes it.

``build_target(backend, precision, options, context, work)`` is what ``convert`` calls per requested
target, and what device profiles (``devices.build_plan``) drive the same way.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from calibration.calibration_set import CalibrationSet
from converters.accuracy_guard import LADDER_REVISION, GuardLimits, guarded_build, layer_sensitivity
from converters.bundle_builder import BuiltEngine, engine_stem
from converters.quantize.qat import QatArtefacts
from converters.quantize.registry import build_engine, host_backend, quantizer_versions
from devices import read_machine
from edge_retina.backends import create_runner
from edge_retina.bench.metrics import auroc
from edge_retina.bundle import CalibrationInfo, EngineEntry
from edge_retina.bundle.manifest import engine_from_dict, engine_to_dict
from edge_retina.engines import BACKENDS, PRECISIONS
from edge_retina.prompt_table import PromptTable

# FP32 is the reference and ships unguarded; FP16 and INT8 (of PRECISIONS) go through the accuracy guard.
#: Where the guard falls back to, per backend, in order, after INT8 layer exclusion. ONNX Runtime's
#: CPU provider goes straight to FP32: it runs an FP16 graph by casting around the ops it has no FP16
#: kernel for, slower than FP32 (the default student here: 4.6 ms against 2.0 ms per image).
FALLBACK_PRECISIONS = {"onnxruntime": ("fp32",), "openvino": ("fp16", "fp32"), "tensorrt": ("fp16", "fp32")}
#: Calibration images the per-layer sensitivity analysis embeds, once per quantized layer.
SENSITIVITY_IMAGES = 16
RECORD = "engine.json"

Progress = Callable[[str], None]


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
    # Quantization-aware distillation with these layers in float, run (or read from the step cache)
    # when the ladder reaches it; None: never. ``qat_first``: INT8 starts with it (``convert --qat always``).
    qat: Callable[[Sequence[str]], QatArtefacts] | None = None
    qat_first: bool = False


def embed_tensors(backend: str, path: Path, precision: str, tensors: np.ndarray, threads: int | None) -> np.ndarray:
    """``backend``'s artefact at ``path`` on (N, 3, H, W) tensors, 16 at a time; run where this host runs it."""
    with create_runner(host_backend(backend), path, precision=precision, threads=threads) as runner:
        return np.concatenate([runner.infer(tensors[s:s + 16]) for s in range(0, len(tensors), 16)])


def mean_auroc_metric(table: PromptTable, labels: dict[str, np.ndarray]) -> Callable[[np.ndarray], float]:
    """Embeddings -> mean zero-shot AUROC over the labelled conditions (NNCF's accuracy-control metric)."""
    def metric(embeddings: np.ndarray) -> float:
        scores = table.score(embeddings).condition_probabilities
        values = []
        for condition, y in labels.items():
            labelled = ~np.isnan(y)
            if condition in scores and len(np.unique(y[labelled])) == 2:
                values.append(auroc(y[labelled], scores[condition][labelled]))
        return float(np.mean(values))

    return metric


def _entry(context: TargetContext, backend: str, precision: str, files: list[Path], **fields: Any) -> BuiltEngine:
    stem = engine_stem(context.role, backend, precision)
    named = {f"{stem}{path.suffix}": path for path in files}
    entry = EngineEntry(backend=backend, precision=precision, role=context.role, files=list(named),
                        toolchain={**context.toolchain, **quantizer_versions(backend, precision)}, **fields)
    return BuiltEngine(entry, named)


def build_target(backend: str, precision: str, options: Mapping[str, Any], context: TargetContext,
                 work: Path) -> BuiltEngine:
    """One engine for ``backend`` at ``precision``, its files written under ``work``.

    FP32 is the reference and ships as is; FP16 and INT8 go through the accuracy guard. ``options``
    (device profiles' converter options) go to the builder (``converters.quantize.registry``).
    """
    if precision == "fp32":
        return _entry(context, backend, "fp32", build_engine(backend, "fp32", context.fp32_onnx, work))
    calibration = context.calibration
    if precision == "int8" and calibration is None:
        raise ValueError("INT8 needs a calibration set")
    if context.eval_tensors is None:
        raise ValueError(f"the accuracy guard needs held-out images to check {precision} against FP32")
    attempt_dirs: list[Path] = []

    def fresh_dir() -> Path:
        directory = work / f"attempt-{len(attempt_dirs)}"
        directory.mkdir()
        attempt_dirs.append(directory)
        return directory

    def build(prec: str, excluded: Sequence[str]) -> tuple[str, list[Path]]:
        settings = dict(options)
        if backend == "openvino" and prec == "int8" and context.labels and context.openvino_accuracy_control:
            from converters.quantize.openvino_nncf import AccuracyControl

            settings["accuracy_control"] = AccuracyControl(context.eval_tensors,
                                                           mean_auroc_metric(context.table, context.labels),
                                                           max_drop=context.limits.auroc_margin)
        tensors = calibration.tensors if prec == "int8" else None
        return prec, build_engine(backend, prec, context.fp32_onnx, fresh_dir(), tensors, excluded, settings)

    def qat(excluded: Sequence[str]) -> tuple[str, list[Path]]:
        directory = fresh_dir()  # a copy the attempt owns: the cached QAT step serves every backend
        return "int8", [Path(shutil.copyfile(f, directory / f.name)) for f in context.qat(excluded).files_for(backend)]

    def embed(artefact: tuple[str, list[Path]]) -> np.ndarray:
        prec, files = artefact
        return embed_tensors(backend, files[0], prec, context.eval_tensors, context.threads)

    def sensitivity() -> list[str]:
        # Ranked on an ONNX Runtime Q/DQ model of every backend (node names are the FP32 ONNX's), so
        # that one ranking, and one QAT run, serves them all.
        qdq = build_engine("onnxruntime", "int8", context.fp32_onnx, fresh_dir(), calibration.tensors)[0]
        return [name for name, _ in layer_sensitivity(context.fp32_onnx, qdq, calibration.tensors[:SENSITIVITY_IMAGES])]

    result = guarded_build(build, embed, context.fp32_embeddings, sensitivity, table=context.table,
                           thresholds=context.thresholds, labels=context.labels, limits=context.limits,
                           requested=precision, fallback_precisions=FALLBACK_PRECISIONS[backend],
                           progress=context.progress, qat=qat if context.qat else None, qat_first=context.qat_first)
    shipped_precision, shipped_files = result.artefact
    for directory in attempt_dirs:  # keep only what ships
        if directory != shipped_files[0].parent:
            shutil.rmtree(directory)
    notes = result.notes(context.limits)
    notes["accuracy_guard"].update(measured_on=measured_on(), ladder_revision=LADDER_REVISION)
    if result.method == "qat":
        notes["qat"] = context.qat(result.excluded_nodes).record
    return _entry(context, backend, shipped_precision, shipped_files,
                  calibration=(CalibrationInfo(calibration.manifest_sha256, calibration.size, calibration.method)
                               if shipped_precision == "int8" else None),
                  notes=notes, fallback=result.fallback_record())


def measured_on() -> dict[str, Any]:
    """The machine the guard's numbers come from: another family of INT8 kernels computes other
    numbers, which the runtime checks (``edge_retina.engines.int8_guard_caveat``)."""
    machine = read_machine()
    return {"cpu_model": machine.cpu_model, "int8_kernels": machine.int8_kernels}


def save_engine(engine: BuiltEngine, directory: Path) -> None:
    """The step cache's record of a built engine: its manifest entry (as the manifest writes it) and files."""
    record = {"entry": engine_to_dict(engine.entry),
              "files": {name: str(path.relative_to(directory)) for name, path in engine.files.items()}}
    (directory / RECORD).write_text(json.dumps(record, indent=2, default=float))


def load_engine(directory: Path) -> BuiltEngine:
    record = json.loads((directory / RECORD).read_text())
    entry = engine_from_dict(record["entry"], str(directory / RECORD))
    return BuiltEngine(entry, {name: directory / rel for name, rel in record["files"].items()})
