"""The demo's conversion settings: what the default bundle is made from (the demo itself runs in `make demo`)."""
from converters.demo import demo_settings
from converters.reference.data import load_records


def test_without_datasets_the_default_bundle_is_fp32_only():
    settings = demo_settings(None)
    assert {t.precision for t in settings.targets} == {"fp32"} and settings.validation is None


def test_calibration_thresholds_and_the_guard_never_see_test_images(shared_datasets):
    settings = demo_settings(shared_datasets)
    assert {(t.backend, t.precision) for t in settings.targets} >= {("openvino", "int8"), ("onnxruntime", "int8")}
    split_of = {r.path(shared_datasets): r.split for r in load_records(shared_datasets)}
    assert {split_of[p] for p in settings.calibration} == {"train"}
    assert {split_of[p] for p in settings.validation.paths} == {"val"}
    assert {split_of[p] for p in settings.guard_images.paths} == {"train"}  # the guard adds them to "val"
    assert {"diabetic_retinopathy", "glaucoma", "cataract", "macular_oedema", "amd", "pathological_myopia",
            "hypertensive_retinopathy"} <= set(settings.validation.labels)


def test_the_default_bundle_serves_the_shipped_student_of_the_shipped_teacher():
    """The committed student must have been distilled from the committed reference weights, or the
    default bundle would score its embeddings against another model's prompt table."""
    from converters.demo import default_recipe
    from converters.teachers import load_teacher

    teacher = load_teacher("reference")
    recipe = default_recipe(teacher)
    assert recipe.role == "student" and recipe.teacher is teacher
    assert recipe.teacher_checkpoint_sha256 == teacher.checkpoint_sha256
    assert recipe.input_spec.size == (192, 192) and recipe.student.arch == "efficientnet_lite0"


def test_the_demo_rebuilds_a_bundle_whose_engines_an_older_guard_ladder_decided():
    """`make demo` reuses its bundle only when converting again would ship the same engines."""
    from dataclasses import replace
    from types import SimpleNamespace

    from converters.accuracy_guard import LADDER_REVISION
    from converters.demo import bundle_is_current
    from edge_retina.bundle import EngineEntry

    teacher, recipe = SimpleNamespace(checkpoint_sha256="t"), SimpleNamespace(student=SimpleNamespace(checkpoint_sha256="s"))
    fp32 = EngineEntry(backend="onnxruntime", precision="fp32", role="student", files=("engines/a.onnx",))
    fell_back = replace(fp32, backend="openvino", notes={"accuracy_guard": {"ladder_revision": LADDER_REVISION}})

    def manifest(*engines, student="s"):
        return SimpleNamespace(model=SimpleNamespace(teacher_checkpoint_sha256="t",
                                                     student=SimpleNamespace(checkpoint_sha256=student)),
                               engines=list(engines))

    assert bundle_is_current(manifest(fp32, fell_back), teacher, recipe)
    assert not bundle_is_current(manifest(fp32, fell_back, student="other"), teacher, recipe)
    older = replace(fell_back, notes={"accuracy_guard": {"ladder_revision": LADDER_REVISION - 1}})
    assert not bundle_is_current(manifest(fp32, older), teacher, recipe)
    unrecorded = replace(fell_back, notes={"accuracy_guard": {"passed": True}})  # built before the revision was kept
    assert not bundle_is_current(manifest(fp32, unrecorded), teacher, recipe)
