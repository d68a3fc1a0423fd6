"""The demo's conversion settings (what the default bundle is made from) and its signing step (the
demo itself runs in `make demo`)."""
import io
import json
import shutil
import stat

from click.testing import CliRunner
from rich.console import Console

from converters.demo import DEMO_KEY_DIR, DEMO_PRIVATE_KEY, DEMO_TRUSTED_KEYS, demo_settings, sign_default_bundle
from converters.reference.data import load_records
from edge_retina.bundle import MANIFEST_NAME
from edge_retina.bundle.manifest import canonical_json
from edge_retina.bundle.signing import read_signed_parts
from edge_retina.cli.bundle import bundle as bundle_cli
from narrow_terminal import COLUMNS, unwrapped


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


def test_the_demo_signs_its_bundle_and_archive_with_a_demo_key_that_verify_accepts(tiny_bundle, tiny_bundle_archive,
                                                                                     tmp_path):
    """A device flashes only signed bundles: the demo signs what it built (directory and archive),
    beside the manifest, with a key pair it makes once in its work folder."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "default-bundle")
    archive = shutil.copy(tiny_bundle_archive, tmp_path / "default-bundle.erb.tar")
    manifests = {path: read_signed_parts(path) for path in (bundle, archive)}
    assert all(signature is None for _, signature in manifests.values())
    out = io.StringIO()
    trusted = sign_default_bundle(bundle, tmp_path / DEMO_KEY_DIR, Console(file=out, width=COLUMNS))

    [key_id] = trusted
    assert out.getvalue() == f"signed with demo key {key_id} (not for production); verified\n"
    private = tmp_path / DEMO_KEY_DIR / DEMO_PRIVATE_KEY
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / DEMO_KEY_DIR / DEMO_TRUSTED_KEYS).iterdir()] == [private.stem + ".pub"]
    for path, (manifest, _) in manifests.items():
        assert read_signed_parts(path)[0] == manifest  # the signature is beside the manifest, which is unchanged
        accepted = CliRunner().invoke(bundle_cli, ["verify", str(path), "--trusted-keys", trusted.source])
        assert accepted.exit_code == 0, accepted.output
        assert unwrapped(f"signed by trusted key {key_id}") in unwrapped(accepted.output)

    again = sign_default_bundle(bundle, tmp_path / DEMO_KEY_DIR, Console(file=io.StringIO()))
    assert list(again) == [key_id]  # a later run reuses the key its devices were given

    engine = next(p for p in sorted((bundle / "engines").iterdir()) if p.is_file())
    engine.write_bytes(engine.read_bytes() + b"\0")
    refused = CliRunner().invoke(bundle_cli, ["verify", str(bundle), "--json", "--trusted-keys", trusted.source])
    assert refused.exit_code == 1 and "expected sha256" in json.loads(refused.output)["problems"][0]

    manifest = json.loads(manifests[bundle][0])
    manifest["prompts"]["conditions"][1]["threshold"] = 0.01  # refer everyone
    shutil.copy(tiny_bundle / engine.relative_to(bundle), engine)  # the files intact again
    (bundle / MANIFEST_NAME).write_bytes(canonical_json(manifest))  # in the form a signature covers
    refused = CliRunner().invoke(bundle_cli, ["verify", str(bundle), "--json", "--trusted-keys", trusted.source])
    assert refused.exit_code == 1
    assert any("signature does not match" in p for p in json.loads(refused.output)["problems"])
