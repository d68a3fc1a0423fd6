"""The one-shot convert: calibration -> guarded INT8 per target -> thresholds -> parity -> bundle,
resumable from its step cache."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from quantize_fixtures import CLASSES, eye4class_rows, write_csv
from tiny_bundle import _tiny_encoder, tiny_recipe

from converters import convert_pipeline
from converters.accuracy_guard import GuardLimits
from converters.convert_pipeline import (
    ConvertError,
    ConvertSettings,
    EngineTarget,
    convert,
)
import devices
from edge_retina.bench.labels import LabelledImages, read_labels_csv
from edge_retina.bundle import load_bundle
from edge_retina.cli.bundle import bundle as bundle_cli
from edge_retina.screener import Screener
from narrow_terminal import narrow_runner, one_error, unwrapped

BOARDS = Path(__file__).parent / "data" / "boards"

# TensorRT first: ModelOpt must not disturb the ONNX Runtime quantization that follows it.
TARGETS = [EngineTarget("tensorrt", "int8"), EngineTarget("onnxruntime", "fp32"), EngineTarget("onnxruntime", "int8"),
           EngineTarget("openvino", "int8")]


@pytest.fixture(scope="module")
def image_sets(shared_datasets, tmp_path_factory) -> tuple[Path, LabelledImages]:
    """12 calibration candidates and a 12-image labelled validation set (cataract and glaucoma vs normal)."""
    folder = tmp_path_factory.mktemp("convert-images")
    rows = eye4class_rows(shared_datasets, 6)
    calibration = write_csv(rows[:12], folder / "calibration.csv")
    validation_rows = [{"file": r["file"], "cataract": "1" if r["label"] == "cataract" else "0" if r["label"] == "normal" else "",
                        "glaucoma": "1" if r["label"] == "glaucoma" else "0" if r["label"] == "normal" else ""}
                       for r in rows[12:] if r["label"] in CLASSES]
    return calibration, read_labels_csv(write_csv(validation_rows, folder / "validation.csv"))


def _settings(image_sets, cache: Path, **overrides) -> ConvertSettings:
    calibration, validation = image_sets
    # Each condition's threshold sits on one validation image's score, which any other kernel (OpenVINO's
    # FP32 included) may move to either side: on 12 images that one image is 8 %, so allow it.
    options = dict(targets=TARGETS, calibration=[calibration], calibration_size=6, validation=validation,
                   cache_dir=cache, threads=2, limits=GuardLimits(min_referral_agreement=0.9))
    return ConvertSettings(**(options | overrides))


def test_convert_builds_guarded_int8_with_thresholds_and_parity_then_resumes_from_cache(image_sets, tmp_path,
                                                                                      monkeypatch, caplog):
    first_log: list[str] = []
    bundle_dir = convert(tiny_recipe(64), tmp_path / "bundle", _settings(image_sets, tmp_path / "cache"),
                         progress=first_log.append)
    manifest = load_bundle(bundle_dir).manifest
    engines = {(e.backend, e.precision if not e.fallback else e.fallback["requested"]): e for e in manifest.engines}
    assert set(engines) == {("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "int8"), ("tensorrt", "int8")}
    for key in (("onnxruntime", "int8"), ("openvino", "int8"), ("tensorrt", "int8")):
        engine = engines[key]
        guard = engine.notes["accuracy_guard"]
        assert guard["passed"] and guard["images"] == 12 and {"cataract", "glaucoma"} <= set(guard["conditions"])
        for condition in ("cataract", "glaucoma"):
            assert guard["conditions"][condition]["referral_agreement"] >= 0.9
            assert len(guard["conditions"][condition]["delta_auroc_ci"]) == 2
        assert all(check["margin"] >= 0 for check in guard["checks"])
        assert guard["measured_on"]["int8_kernels"] == devices.read_machine().int8_kernels  # where it holds
        if engine.precision == "int8":
            assert engine.calibration.size == 6 and engine.calibration.method == "kcenter-embeddings"
    thresholds = {c.name: c for c in manifest.prompts.conditions}
    for name in ("cataract", "glaucoma"):
        assert thresholds[name].threshold_source.startswith("validation set: sensitivity")
    parity = json.loads((bundle_dir / "reports" / "parity.json").read_text())
    assert parity["reference"] == "fp32 onnx" and parity["images"] == 12
    assert not any("cached" in line for line in first_log)
    inspected = CliRunner().invoke(bundle_cli, ["inspect", str(bundle_dir)])
    assert inspected.exit_code == 0, inspected.output
    here = devices.read_machine()
    for phrase in ("onnxruntime/int8/teacher: passed the accuracy guard on 12 photos (closest: ",
                   f"measured on {here.cpu_model} ({here.int8_kernels} INT8 kernels)"):
        assert unwrapped(phrase) in unwrapped(inspected.output), inspected.output
    # A device whose INT8 kernels are another family than the guard's is told to check the engine.
    other = "x86-avx2" if here.int8_kernels != "x86-avx2" else "x86-avx512-vnni"
    monkeypatch.setattr(devices, "read_machine", lambda root="/": devices.facts.read_machine(BOARDS / other))
    with Screener.from_bundle(bundle_dir, backend="onnxruntime", precision="int8"):
        pass
    assert any("passed the accuracy guard on a CPU with" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records), caplog.text

    second_log: list[str] = []
    again = convert(tiny_recipe(64), tmp_path / "again", _settings(image_sets, tmp_path / "cache"),
                    progress=second_log.append)
    for step in ("export", "calibration", "reference"):
        assert any(f"] {step}: cached" in line for line in second_log), second_log
    assert sum("int8: cached" in line for line in second_log) == 3
    again_manifest = load_bundle(again).manifest
    assert again_manifest.files == manifest.files  # the same engines, prompts and report, byte for byte


def test_a_failing_step_is_named_and_a_rerun_resumes_after_it(image_sets, tmp_path, monkeypatch):
    real_build = convert_pipeline.build_target

    def broken(backend, precision, options, context, work):
        raise RuntimeError("quantizer crashed")

    monkeypatch.setattr(convert_pipeline, "build_target", broken)
    settings = _settings(image_sets, tmp_path / "cache", targets=[EngineTarget("onnxruntime", "int8")], validation=None)
    with pytest.raises(ConvertError, match="step 'engines': quantizer crashed"):
        convert(tiny_recipe(64), tmp_path / "bundle", settings)
    assert not (tmp_path / "bundle").exists()

    monkeypatch.setattr(convert_pipeline, "build_target", real_build)
    log: list[str] = []
    bundle_dir = convert(tiny_recipe(64), tmp_path / "bundle", settings, progress=log.append)
    assert any("] calibration: cached" in line for line in log) and any("] export: cached" in line for line in log)
    engine = load_bundle(bundle_dir).manifest.engines[0]
    assert engine.backend == "onnxruntime" and engine.notes["accuracy_guard"]["images"] > 0


def test_guard_images_add_to_the_guard_but_not_to_thresholds_or_parity(image_sets, shared_datasets, tmp_path):
    """Training photos join the guard; the calibration candidates (here: all 12 of them) stay out."""
    calibration_csv, validation = image_sets
    candidates = read_labels_csv(write_csv([{"file": r["file"], "glaucoma": "1" if r["label"] == "glaucoma" else "0"}
                                            for r in eye4class_rows(shared_datasets, 6)[:12]],
                                           tmp_path / "guard.csv"))
    settings = _settings(image_sets, tmp_path / "cache", targets=[EngineTarget("onnxruntime", "int8")],
                         guard_images=candidates)
    bundle_dir = convert(tiny_recipe(64), tmp_path / "bundle", settings)
    guard = load_bundle(bundle_dir).manifest.engines[0].notes["accuracy_guard"]
    # The 12 validation images, and of the candidates only the one the calibration step rejected as
    # unusable: the 6 calibrated on and the 5 held out (quantization-aware distillation trains on them)
    # cannot check the quantizer.
    assert guard["images"] == 12 + 1
    parity = json.loads((bundle_dir / "reports" / "parity.json").read_text())
    assert parity["images"] == 12


def test_int8_without_calibration_images_is_refused_by_the_settings_not_after_the_export(tmp_path):
    with pytest.raises(ValueError, match=r"INT8 targets need calibration images \(--calibration IMAGES_OR_CSV\): "
                                         r"openvino:int8$"):
        ConvertSettings(targets=[EngineTarget("openvino", "int8"), EngineTarget("onnxruntime", "fp32")],
                        cache_dir=tmp_path / "cache")


def test_guard_limits_that_int8_cannot_meet_ship_fp32_and_say_so(image_sets, tmp_path):
    settings = _settings(image_sets, tmp_path / "cache", targets=[EngineTarget("onnxruntime", "int8")],
                         limits=GuardLimits(min_referral_agreement=0.9, min_mean_cosine=1.0 - 1e-9), qat="never")
    bundle_dir = convert(tiny_recipe(64), tmp_path / "bundle", settings)
    engine = load_bundle(bundle_dir).manifest.engines[0]
    assert engine.precision == "fp32" and engine.calibration is None
    assert engine.fallback["requested"] == "int8" and engine.fallback["shipped"] == "fp32"
    assert engine.fallback["reason"].startswith("mean cosine")
    failed = len(engine.fallback["attempts"]) - 1
    inspected = CliRunner().invoke(bundle_cli, ["inspect", str(bundle_dir)])
    assert unwrapped(f"onnxruntime/fp32/teacher: int8 requested; {failed} attempts failed the accuracy guard, "
                     f"fp32 shipped; measured on") in unwrapped(inspected.output), inspected.output


def test_qat_always_runs_once_for_every_backend_and_is_recorded(image_sets, tmp_path):
    from converters.quantize.qat import QatConfig

    log: list[str] = []
    # The wiring, not QAT's accuracy (tests/test_qat.py): 12 images of a random tiny network are no
    # place to hold a 1-epoch QAT to the default limits.
    limits = GuardLimits(auroc_margin=1.0, min_referral_agreement=0.0, min_mean_cosine=0.98, min_p1_cosine=0.95)
    settings = _settings(image_sets, tmp_path / "cache", qat="always", qat_config=QatConfig(epochs=1), limits=limits,
                         targets=[EngineTarget("onnxruntime", "int8"), EngineTarget("openvino", "int8")])
    engines = load_bundle(convert(tiny_recipe(64), tmp_path / "bundle", settings, progress=log.append)).manifest.engines
    for engine in engines:
        assert engine.precision == "int8", (engine.describe(), engine.fallback)
        assert engine.notes["qat"]["config"]["epochs"] == 1
        assert engine.notes["qat"]["calibration_images"] == 6 and engine.fallback is None
    assert sum("QAT epoch 1/1" in line for line in log) == 1  # one run, cached for the second backend


def test_targets_are_validated():
    with pytest.raises(ValueError, match="unknown precision"):
        EngineTarget("openvino", "int4")
    with pytest.raises(ValueError, match="unknown backend"):
        EngineTarget("coreml", "int8")


def test_fp16_target_is_guarded_too(image_sets, tmp_path):
    settings = _settings(image_sets, tmp_path / "cache", targets=[EngineTarget("onnxruntime", "fp16")])
    engine = load_bundle(convert(tiny_recipe(64), tmp_path / "bundle", settings)).manifest.engines[0]
    assert engine.precision == "fp16" and engine.fallback is None
    assert engine.notes["accuracy_guard"]["passed"] and engine.notes["accuracy_guard"]["cosine"]["mean"] > 0.999


def test_cli_refuses_an_unknown_int8_backend(tmp_path):
    from click.testing import CliRunner

    from converters.commands.convert import convert as convert_command

    result = CliRunner().invoke(convert_command, ["--out", str(tmp_path / "b"), "--int8", "coreml"])
    assert result.exit_code == 2 and unwrapped("unknown backend 'coreml'") in unwrapped(result.output)


def test_cli_refuses_int8_without_calibration_images_before_loading_the_teacher(tmp_path, monkeypatch):
    """A device profile's INT8 engine too: refused before the teacher loads and exports, not at the
    calibration step after them."""
    from converters.commands.convert import convert as convert_command

    monkeypatch.setattr("converters.teachers.load_teacher", lambda *args, **kwargs: pytest.fail("loaded the teacher"))
    result = narrow_runner().invoke(convert_command, ["--out", str(tmp_path / "b"), "--device", "arm64-cpu"])
    assert result.exit_code == 2 and one_error(result.output), result.output
    assert unwrapped("INT8 targets need calibration images (--calibration IMAGES_OR_CSV): onnxruntime:int8") in \
        unwrapped(result.output)


def test_convert_for_devices_emits_exactly_what_each_profile_needs(image_sets, tmp_path):
    import devices
    from device_plans import missing_from_bundle

    profiles = ["x86-64-avx512-vnni", "arm64-cpu", "jetson-orin-nano"]
    targets = EngineTarget.for_devices(profiles, role="teacher")
    bundle_dir = convert(tiny_recipe(64), tmp_path / "bundle", _settings(image_sets, tmp_path / "cache", targets=targets))
    engines = load_bundle(bundle_dir).manifest.engines
    for name in profiles:
        plan = devices.build_plan([name], role="teacher")
        assert missing_from_bundle(plan, engines) == [], name
    assert len(engines) == len(targets)  # nothing a profile did not ask for
    assert {e.device_profile for e in engines} == {t.device_profile for t in targets}


def test_convert_refuses_an_input_larger_than_a_device_allows(image_sets, tmp_path):
    target = EngineTarget("onnxruntime", "int8", device_profile="tiny-board", max_input_side=32)
    with pytest.raises(ConvertError, match="tiny-board allows"):
        convert(tiny_recipe(64), tmp_path / "bundle", _settings(image_sets, tmp_path / "cache", targets=[target]))


def test_a_student_bundle_reports_teacher_student_and_engines_side_by_side(image_sets, tmp_path):
    """A distilled student's bundle: the parity report is held to the PyTorch teacher (which sees the
    images at its own input size), and the manifest carries the distillation report."""
    from dataclasses import replace

    import torch

    from converters.teachers import Teacher
    from edge_retina.bundle.manifest import StudentInfo

    student = tiny_recipe(64)
    with torch.no_grad():  # the teacher: the same tiny network, slightly perturbed, at another size
        teacher_encoder = _tiny_encoder()
        for p in teacher_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    teacher = Teacher(family="test-tiny", name="tiny-teacher", image_encoder=teacher_encoder,
                      embed_texts=student.embed_texts, input_spec=replace(student.input_spec, size=(80, 80)),
                      ensembling=student.ensembling, logit_scale=student.logit_scale, checkpoint_sha256="0" * 64)
    recipe = replace(student, role="student", teacher=teacher,
                     student=StudentInfo(name="tiny-student", arch="tiny", checkpoint_sha256="1" * 64))
    targets = [EngineTarget("onnxruntime", "fp32"), EngineTarget("onnxruntime", "int8")]
    bundle_dir = convert(recipe, tmp_path / "bundle", _settings(image_sets, tmp_path / "cache", targets=targets))

    parity = json.loads((bundle_dir / "reports" / "parity.json").read_text())
    assert parity["reference"] == "teacher (PyTorch fp32)"
    assert parity["models"][:2] == ["teacher (PyTorch fp32)", "student fp32 onnx"] and len(parity["models"]) == 4
    teacher_auroc = {c["condition"]: c["models"]["teacher (PyTorch fp32)"]["auroc"] for c in parity["conditions"]}
    student_auroc = {c["condition"]: c["models"]["student fp32 onnx"]["auroc"] for c in parity["conditions"]}

    manifest = load_bundle(bundle_dir).manifest
    assert {e.role for e in manifest.engines} == {"student"}
    report = manifest.model.student.distillation
    assert set(report["conditions"]) == {"cataract", "glaucoma"} and report["held_out_images"] == 12
    cataract = report["conditions"]["cataract"]
    assert (cataract["auroc_teacher"], cataract["auroc_student"]) == (teacher_auroc["cataract"], student_auroc["cataract"])
    if teacher_auroc["cataract"] > 0.5:
        assert cataract["retention"] == pytest.approx((student_auroc["cataract"] - 0.5) / (teacher_auroc["cataract"] - 0.5))
    assert 0 <= cataract["decision_agreement"] <= 1 and cataract["threshold"] is not None
    assert 0.5 < report["cosine_to_teacher"]["min"] < 1.0
    profile = report["profile"]
    assert profile["teacher"]["input_size"] == [80, 80] and profile["student"]["input_size"] == [64, 64]
    assert profile["teacher"]["median_ms"] > 0 and profile["speedup"] > 0
    # The report card is shown by `bundle inspect` (runtime side).
    from narrow_terminal import COLUMNS, widest_line

    from edge_retina.cli.main import cli

    shown = narrow_runner().invoke(cli, ["bundle", "inspect", str(bundle_dir)], catch_exceptions=False)
    assert shown.exit_code == 0 and unwrapped("student vs teacher on 12 held-out images") in unwrapped(shown.output)
    assert "cataract" in shown.output and "retention" in shown.output
    assert widest_line(shown.output) <= COLUMNS, shown.output
