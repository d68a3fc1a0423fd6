"""The demo's conversion settings: what the default bundle is made from (the demo itself runs in `make demo`)."""
from converters.demo import demo_settings
from converters.reference.data import load_records


def test_without_datasets_the_default_bundle_is_fp32_only():
    settings = demo_settings(None)
    assert {t.precision for t in settings.targets} == {"fp32"} and settings.validation is None


def test_calibration_and_thresholds_never_see_test_images(shared_datasets):
    settings = demo_settings(shared_datasets)
    assert {(t.backend, t.precision) for t in settings.targets} >= {("openvino", "int8"), ("onnxruntime", "int8")}
    split_of = {r.path(shared_datasets): r.split for r in load_records(shared_datasets)}
    assert {split_of[p] for p in settings.calibration} == {"train"}
    assert {split_of[p] for p in settings.validation.paths} == {"val"}
    assert {"diabetic_retinopathy", "glaucoma", "cataract", "macular_oedema"} <= set(settings.validation.labels)
