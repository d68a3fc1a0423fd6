"""The demo's conversion settings (what the default bundle is made from) and its signing step (the
demo itself runs in `make demo`)."""
import io
import json
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from converters.demo import (
    DEMO_KEY_DIR,
    DEMO_PRIVATE_KEY,
    DEMO_TRUSTED_KEYS,
    DemoSigningError,
    demo_settings,
    sign_default_bundle,
)
from converters.reference.data import load_records
from edge_retina.bundle import MANIFEST_NAME
from edge_retina.bundle.manifest import canonical_json
from edge_retina.bundle.paths import SIGNATURE_NAME
from edge_retina.bundle.signing import check_signature, read_signed_parts
from edge_retina.cli.bundle import bundle as bundle_cli
from narrow_terminal import COLUMNS, narrow_runner, one_error, unwrapped


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


def _signed_copy(tiny_bundle, tiny_bundle_archive, tmp_path):
    """The tiny bundle and its archive where the demo keeps its default bundle, signed by the demo."""
    bundle = shutil.copytree(tiny_bundle, tmp_path / "default-bundle")
    archive = shutil.copy(tiny_bundle_archive, tmp_path / "default-bundle.erb.tar")
    trusted = sign_default_bundle(bundle, tmp_path / DEMO_KEY_DIR, Console(file=io.StringIO()))
    return bundle, archive, trusted


def test_the_demo_does_not_sign_again_what_its_key_signed_but_still_verifies_it(tiny_bundle, tiny_bundle_archive,
                                                                               tmp_path, monkeypatch):
    """Signing an archive unpacks and repacks all of it (40 MB): not on every run of an up-to-date bundle."""
    from edge_retina.bundle.signing import generate_key_pair, load_private_key, sign_bundle

    bundle, archive, trusted = _signed_copy(tiny_bundle, tiny_bundle_archive, tmp_path)
    signed = {path: path.joinpath(SIGNATURE_NAME).read_bytes() if path.is_dir() else path.read_bytes()
              for path in (bundle, archive)}
    monkeypatch.setattr("converters.demo.sign_bundle", lambda *args: pytest.fail("signed again"))
    again = sign_default_bundle(bundle, tmp_path / DEMO_KEY_DIR, Console(file=io.StringIO()))
    assert list(again) == list(trusted)
    assert signed == {path: path.joinpath(SIGNATURE_NAME).read_bytes() if path.is_dir() else path.read_bytes()
                      for path in (bundle, archive)}

    engine = next(p for p in sorted((bundle / "engines").iterdir()) if p.is_file())
    engine.write_bytes(engine.read_bytes() + b"\0")  # signed, but its files no longer match
    with pytest.raises(DemoSigningError, match="expected sha256"):
        sign_default_bundle(bundle, tmp_path / DEMO_KEY_DIR, Console(file=io.StringIO()))

    monkeypatch.undo()
    shutil.copy(tiny_bundle / engine.relative_to(bundle), engine)
    generate_key_pair(tmp_path / "other.key", tmp_path / "other.pub")
    sign_bundle(bundle, load_private_key(tmp_path / "other.key"))  # another key's signature is replaced
    sign_default_bundle(bundle, tmp_path / DEMO_KEY_DIR, Console(file=io.StringIO()))
    assert check_signature(bundle, trusted) == next(iter(trusted))


@pytest.mark.parametrize("change", ["deleted", "another key's", "private key lost"])
def test_the_demos_trusted_keys_always_take_its_private_key(change, tiny_bundle, tiny_bundle_archive, tmp_path):
    """The folder a device is given must accept what the demo signs, whatever became of it."""
    from edge_retina.bundle.signing import generate_key_pair

    bundle, _, first = _signed_copy(tiny_bundle, tiny_bundle_archive, tmp_path)
    key_dir = tmp_path / DEMO_KEY_DIR
    public = key_dir / DEMO_TRUSTED_KEYS / Path(DEMO_PRIVATE_KEY).with_suffix(".pub").name
    if change == "deleted":
        shutil.rmtree(key_dir / DEMO_TRUSTED_KEYS)
    elif change == "another key's":
        public.unlink()
        generate_key_pair(tmp_path / "other.key", public)
    else:
        (key_dir / DEMO_PRIVATE_KEY).unlink()
    trusted = sign_default_bundle(bundle, key_dir, Console(file=io.StringIO()))
    assert [p.name for p in (key_dir / DEMO_TRUSTED_KEYS).iterdir()] == [public.name]
    assert (list(trusted) == list(first)) == (change != "private key lost")
    for path in (bundle, bundle.with_suffix(".erb.tar")):
        accepted = CliRunner().invoke(bundle_cli, ["verify", str(path), "--trusted-keys", trusted.source])
        assert accepted.exit_code == 0, accepted.output


def test_a_signing_step_that_fails_ends_the_demo_with_1_not_as_a_refusal(tiny_bundle, tmp_path, monkeypatch):
    """The bundle was built by then: the run's outcome (1), like a failed conversion step."""
    from edge_retina.cli.main import cli

    bundle = shutil.copytree(tiny_bundle, tmp_path / "default-bundle")
    engine = next(p for p in sorted((bundle / "engines").iterdir()) if p.is_file())
    engine.write_bytes(engine.read_bytes() + b"\0")
    monkeypatch.setattr("converters.demo.run_demo", lambda config: sign_default_bundle(
        bundle, config.workdir / DEMO_KEY_DIR, Console(file=io.StringIO())))
    result = narrow_runner().invoke(cli, ["demo", "--workdir", str(tmp_path)])
    assert result.exit_code == 1 and one_error(result.output), result.output
    assert unwrapped(f"signing the default bundle with the demo key of {tmp_path / DEMO_KEY_DIR} failed") \
        in unwrapped(result.output), result.output
