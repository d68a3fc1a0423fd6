"""One exit-status convention for every command, as the top-level --help states it: a command refused
before its work (an option, a bundle, the input or an output) exits 2 with one "error:" line, whether
it is a runtime, a bridge or a host command."""
from __future__ import annotations

import importlib
import json

import pytest
from narrow_terminal import narrow_runner, one_error, unwrapped

from edge_retina.cli.main import cli


def test_the_top_level_help_states_the_convention():
    said = unwrapped(narrow_runner().invoke(cli, ["--help"]).output)
    for phrase in ("Exit status, every command: 0 done;", "1 it ran and the outcome is a failure",
                   "2 refused before the work", "130 interrupted (Ctrl-C)"):
        assert unwrapped(phrase) in said, said


def _bad_prompt_file(tmp_path):
    prompt_file = tmp_path / "prompts.json"
    prompt_file.write_text(json.dumps({"schema": 9, "conditions": []}))
    return ["prompts", "show", str(prompt_file)], "schema must be 1"


def _calibration_csv_without_files(tmp_path):
    listing = tmp_path / "calibration.csv"
    listing.write_text("path,site\na.jpg,north\n")
    return ["calibrate", str(listing), "--out", str(tmp_path / "set")], "needs a 'file' column"


def _calibration_csv_without_the_stratify_column(tmp_path):
    listing = tmp_path / "calibration.csv"
    listing.write_text("file,site,camera\na.jpg,north,x1\n")  # a.jpg is not there: the check reads no image
    return (["calibrate", str(listing), "--out", str(tmp_path / "set"), "--stratify", "site", "--stratify", "region"],
            "cannot stratify by 'region': not a column of the calibration CSV (its columns besides 'file': site, "
            "camera)")


def _int8_without_calibration_images(tmp_path):
    return (["convert", "--out", str(tmp_path / "bundle"), "--int8", "onnxruntime"],
            "INT8 targets need calibration images (--calibration IMAGES_OR_CSV)")


def _unreadable_teacher_checkpoint(tmp_path, photo):
    checkpoint = tmp_path / "teacher.safetensors"
    checkpoint.write_bytes(b"cut short")
    return (["distill", "--checkpoint", str(checkpoint), "--images", str(photo), "--work-dir", str(tmp_path / "run"),
             "--out", str(tmp_path / "student.safetensors")], f"{checkpoint}: not a safetensors file")


@pytest.mark.parametrize("refusal", [
    pytest.param(lambda tmp_path, bundle, photo: (["devices", "show", "no-such-profile"],
                                                  "unknown device profile 'no-such-profile'"), id="devices-show"),
    pytest.param(lambda tmp_path, bundle, photo: (["screen", str(photo), "--bundle", str(bundle), "--device",
                                                   "no-such-profile"], "unknown device profile 'no-such-profile'"),
                 id="screen-device"),
    pytest.param(lambda tmp_path, bundle, photo: (["bridge", "results", "--store", str(tmp_path / "none.sqlite3")],
                                                  "no result store at"), id="bridge-results"),
    pytest.param(lambda tmp_path, bundle, photo: _bad_prompt_file(tmp_path), id="prompts-show"),
    pytest.param(lambda tmp_path, bundle, photo: _calibration_csv_without_files(tmp_path), id="calibrate"),
    pytest.param(lambda tmp_path, bundle, photo: _calibration_csv_without_the_stratify_column(tmp_path),
                 id="calibrate-stratify"),
    pytest.param(lambda tmp_path, bundle, photo: _int8_without_calibration_images(tmp_path), id="convert"),
    pytest.param(lambda tmp_path, bundle, photo: _unreadable_teacher_checkpoint(tmp_path, photo), id="distill"),
])
def test_a_refused_command_exits_2_with_one_error_line(refusal, tmp_path, tiny_bundle, retina_jpeg):
    args, says = refusal(tmp_path, tiny_bundle, retina_jpeg)
    result = narrow_runner().invoke(cli, args)
    assert result.exit_code == 2 and one_error(result.output), result.output
    assert unwrapped(says) in unwrapped(result.output), result.output


@pytest.mark.parametrize("command, module, function", [("convert", "converters.convert_pipeline", "convert"),
                                                        ("demo", "converters.demo", "run_demo")])
def test_a_conversion_that_fails_exits_1_in_the_same_form(command, module, function, tmp_path, monkeypatch):
    """A step that fails is the run's outcome (1), not a refusal: the options were fine."""
    from converters.convert_pipeline import ConvertError

    def failing(*args, **kwargs):
        raise ConvertError("engines", "the accuracy guard failed")

    monkeypatch.setattr(importlib.import_module(module), function, failing)
    if command == "convert":
        # No teacher to load before the failing step: loading one prints Hugging Face's progress bar in
        # a test process that imported transformers before the CLI could switch its bars off.
        monkeypatch.setattr("converters.teachers.load_teacher", lambda *args, **kwargs: None)
        monkeypatch.setattr("converters.bundle_builder.BundleRecipe.from_teacher", lambda *args: None)
    where = ["--out", str(tmp_path / "bundle")] if command == "convert" else ["--workdir", str(tmp_path)]
    result = narrow_runner().invoke(cli, [command, *where])
    assert result.exit_code == 1 and one_error(result.output), result.output
    assert unwrapped("convert failed at step 'engines'") in unwrapped(result.output), result.output
