"""``edge-retina convert``: teacher checkpoint (or a student distilled from it) -> bundle, in one command.

FP32 ONNX -> calibration -> INT8 per requested backend (accuracy-guarded) -> thresholds -> parity
report -> bundle, each step cached by content hash so a re-run resumes (``converters.convert_pipeline``).
"""
from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

from converters.commands.options import FAMILY_OPTION, TEACHER_OPTION
from converters.commands.options import teacher_options as parse_teacher_options
from converters.prompt_files import DEFAULT_PROMPT_FILE
from edge_retina.command_error import fail


def _comma_list(text: str) -> list[str]:
    return [b.strip() for b in text.split(",") if b.strip()]


@click.command()
@FAMILY_OPTION
@click.option("--checkpoint", type=click.Path(path_type=Path, dir_okay=True), default=None,
              help="Teacher checkpoint (default: the family's embedded weights, where it has them).")
@click.option("--prompts", "prompt_file", type=click.Path(path_type=Path, dir_okay=False),
              default=DEFAULT_PROMPT_FILE, show_default=True, help="Prompt file (conditions and their prompts).")
@click.option("--student", "student_weights", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=None,
              help="Bundle this distilled student (.safetensors from 'edge-retina distill', distilled from the "
                   "teacher above) instead of the teacher: its engines, the teacher's prompt table, and a "
                   "parity report with teacher, student and engines side by side.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Bundle directory to write.")
@click.option("--backends", default="onnxruntime,openvino", show_default=True,
              help="FP32 engines to include (onnxruntime, openvino; '' for none).")
@click.option("--int8", "int8_backends", default="", metavar="BACKENDS",
              help="INT8 engines to build, e.g. 'openvino,onnxruntime,tensorrt' (tensorrt: a Q/DQ ONNX the "
                   "device builds its engine from). Each is checked by the accuracy guard.")
@click.option("--fp16", "fp16_backends", default="", metavar="BACKENDS",
              help="FP16 engines to build (checked by the accuracy guard like INT8).")
@click.option("--device", "device_profiles", default="", metavar="PROFILE[,PROFILE...]",
              help="Emit exactly what these device profiles need (edge-retina devices list); replaces "
                   "--backends/--fp16/--int8.")
@click.option("--calibration", "calibration_sources", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Calibration images: files, folders, a CSV (file column + metadata), or a folder made by "
                   "'edge-retina calibrate'. Repeatable.")
@click.option("--calibration-size", type=click.IntRange(min=1), default=300, show_default=True)
@click.option("--validation", "validation_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Labels CSV (docs/LABELS.md): thresholds, the accuracy guard and the parity report.")
@click.option("--guard-images", "guard_csv", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None,
              help="Labels CSV of more images for the accuracy guard alone, e.g. the training split: it compares "
                   "INT8 with its own FP32 model, so any labelled image it was not calibrated on helps.")
@click.option("--target-sensitivity", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.90,
              show_default=True, help="Each condition's referral threshold is chosen for this sensitivity.")
@click.option("--auroc-margin", type=click.FloatRange(min=0.0), default=0.005, show_default=True,
              help="Accuracy guard: non-inferiority margin; the lower end of the 95 % CI of ΔAUROC must be >= -this.")
@click.option("--min-referral-agreement", type=click.FloatRange(0.0, 1.0), default=0.99, show_default=True,
              help="Accuracy guard: minimum share of images referred alike by INT8 and FP32, per condition.")
@click.option("--min-cosine", type=float, default=0.99, show_default=True,
              help="Accuracy guard: minimum mean embedding cosine to the FP32 model.")
@click.option("--min-p1-cosine", type=float, default=0.98, show_default=True,
              help="Accuracy guard: minimum 1st percentile of the embedding cosine to the FP32 model.")
@click.option("--qat", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Quantization-aware distillation (NNCF QAT on the torch encoder, a few epochs on the calibration "
                   "images): 'auto' when post-training INT8 fails the accuracy guard even with its most sensitive "
                   "layers in float, 'always' instead of post-training INT8, 'never'.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Inference threads while converting.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Step cache (default: ~/.cache/edge-retina/convert); a re-run resumes from it.")
@click.option("--archive", type=click.Path(path_type=Path), default=None,
              help="Also pack the bundle into this single archive file.")
@TEACHER_OPTION
def convert(family: str, checkpoint: Path | None, prompt_file: Path, student_weights: Path | None, out: Path,
            backends: str, int8_backends: str, device_profiles: str, fp16_backends: str,
            calibration_sources: tuple[Path, ...], calibration_size: int, validation_csv: Path | None,
            guard_csv: Path | None, target_sensitivity: float, auroc_margin: float, min_referral_agreement: float,
            min_cosine: float, min_p1_cosine: float, qat: str, seed: int, threads: int | None,
            cache_dir: Path | None, archive: Path | None, teacher_options: tuple[str, ...]) -> None:
    """Teacher checkpoint (or its distilled student) -> bundle: FP32 and INT8 engines, thresholds, parity
    report, prompt table."""
    from converters.accuracy_guard import GuardLimits
    from converters.bundle_builder import BundleRecipe
    from converters.convert_pipeline import ConvertError, ConvertSettings, EngineTarget
    from converters.convert_pipeline import convert as run_convert
    from converters.step_cache import default_cache_dir
    from converters.teachers import load_teacher
    from edge_retina.bench.labels import read_labels_csv
    from edge_retina.console_tables import print_wrapped
    from edge_retina.errors import EdgeRetinaError

    try:
        if device_profiles:
            targets = EngineTarget.for_devices(_comma_list(device_profiles),
                                               role="student" if student_weights else "teacher")
        else:
            targets = ([EngineTarget(b, "fp32") for b in _comma_list(backends)]
                       + [EngineTarget(b, "fp16") for b in _comma_list(fp16_backends)]
                       + [EngineTarget(b, "int8") for b in _comma_list(int8_backends)])
    except (ValueError, EdgeRetinaError) as exc:
        raise click.BadParameter(str(exc)) from None
    if not targets:
        raise click.BadParameter("no engines requested: give --backends, --fp16 and/or --int8")
    try:
        settings = ConvertSettings(
            targets=targets, calibration=calibration_sources, calibration_size=calibration_size, seed=seed,
            validation=read_labels_csv(validation_csv) if validation_csv else None,
            guard_images=read_labels_csv(guard_csv) if guard_csv else None, target_sensitivity=target_sensitivity,
            limits=GuardLimits(auroc_margin, min_referral_agreement, min_cosine, min_p1_cosine),
            cache_dir=cache_dir or default_cache_dir(), threads=threads, qat=qat,
        )
    except ValueError as exc:  # options that cannot make a bundle (INT8 without calibration images)
        fail(exc)
    teacher = load_teacher(family, checkpoint, **parse_teacher_options(teacher_options))
    if student_weights is None:
        recipe = BundleRecipe.from_teacher(teacher, prompt_file)
    else:
        from converters.distill.bundling import student_recipe

        try:
            recipe = student_recipe(teacher, student_weights, prompt_file)
        except ValueError as exc:  # distilled from another teacher checkpoint
            raise click.BadParameter(str(exc), param_hint="--student") from None
    stderr = Console(stderr=True)
    try:
        bundle = run_convert(recipe, out, settings, archive=archive,
                             progress=lambda message: print_wrapped(stderr, message))
    except ConvertError as exc:  # a step failed: the run's outcome (1), not a refusal
        fail(exc, exit_code=1)
    click.echo(f"bundle written to {bundle}" + (f" and {archive}" if archive else ""))
