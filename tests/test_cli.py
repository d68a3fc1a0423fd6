"""The edge-retina command: screen, bundle inspect/verify, host commands without their extra."""
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from narrow_terminal import COLUMNS, folder_wider_than_the_terminal, narrow_runner, one_error, unwrapped, widest_line

from edge_retina.cli.main import cli

REPO = Path(__file__).resolve().parents[1]


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def mixed_folder(tmp_path, retina_jpeg):
    folder = tmp_path / "captures"
    (folder / "day2").mkdir(parents=True)
    shutil.copy(retina_jpeg, folder / "a.jpg")
    shutil.copy(retina_jpeg, folder / "day2" / "b.jpg")
    (folder / "broken.jpg").write_bytes(retina_jpeg.read_bytes()[:5000])  # truncated camera write
    (folder / "zero.png").write_bytes(b"")
    return folder


def test_screen_folder_writes_a_row_for_everything(tiny_bundle, mixed_folder, tmp_path):
    out = tmp_path / "results.csv"
    res = run("screen", mixed_folder, tmp_path / "missing.jpg", "--bundle", tiny_bundle, "--out", out)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5
    by_name = {Path(r["source"]).name: r for r in rows}
    assert by_name["a.jpg"]["status"] in {"refer", "no-referral"} and by_name["b.jpg"]["p_glaucoma"]
    assert by_name["broken.jpg"]["status"] == "error" and by_name["broken.jpg"]["error_code"] == "corrupt"
    assert by_name["zero.png"]["error_code"] == "empty_file"
    assert by_name["missing.jpg"]["error_code"] == "not_found"
    assert not out.with_name("results.csv.partial").exists()
    assert unwrapped("Screening results") in unwrapped(res.output) and "errors" in res.output
    assert re.search(r"5 images in [0-9.]+ s, [0-9.]+ images/s \(\d+ workers?\); start-up [0-9.]+ s", res.output)


def test_screen_counts_one_worker_in_the_singular(tiny_bundle, retina_jpeg):
    res = run("screen", retina_jpeg, "--bundle", tiny_bundle, "--workers", "1")
    assert res.exit_code == 0 and re.search(r"1 image in [0-9.]+ s, .* \(1 worker\); start-up", res.output), res.output


def test_screen_with_workers_keeps_the_input_order(tiny_bundle, mixed_folder):
    res = run("screen", mixed_folder, "--bundle", tiny_bundle, "--json", "--workers", "3", "--max-batch", "2")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [Path(r["source"]).name for r in doc["results"]] == ["a.jpg", "broken.jpg", "b.jpg", "zero.png"]
    throughput = doc["summary"]["throughput"]
    assert throughput["workers"] == 3 and throughput["max_batch"] == 2 and throughput["images_per_s"] > 0
    assert throughput["startup_s"] > 0


def test_screen_json_output_and_conditions(tiny_bundle, retina_jpeg, tmp_path):
    res = run("screen", retina_jpeg, "--bundle", tiny_bundle, "--json", "--conditions", "glaucoma,cataract",
              "--out", tmp_path / "r.json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert len(doc["results"]) == 1 and set(doc["results"][0]["probabilities"]) == {"glaucoma", "cataract"}
    assert doc["summary"]["images"] == 1 and doc["summary"]["engine"]["backend"]
    assert json.loads((tmp_path / "r.json").read_text())[0]["source"] == str(retina_jpeg)


def test_screen_exit_status_when_nothing_could_be_screened(tiny_bundle, tmp_path):
    (tmp_path / "empty").mkdir()
    res = run("screen", tmp_path / "empty", tmp_path / "nope.jpg", "--bundle", tiny_bundle)
    assert res.exit_code == 1
    assert unwrapped("no images") in unwrapped(res.output) and unwrapped("no such file") in unwrapped(res.output)


def test_screen_says_the_referral_covers_only_the_chosen_conditions(tiny_bundle, retina_jpeg):
    res = narrow_runner().invoke(cli, ["screen", str(retina_jpeg), "--bundle", str(tiny_bundle),
                                       "--conditions", "glaucoma,,cataract,"], catch_exceptions=False)
    assert res.exit_code == 0 and widest_line(res.output) <= COLUMNS, res.output
    assert unwrapped("referral covers only: glaucoma, cataract (--conditions)") in unwrapped(res.output)
    doc = json.loads(run("screen", retina_jpeg, "--bundle", tiny_bundle, "--conditions", "glaucoma", "--json").stdout)
    assert doc["summary"]["conditions"] == ["glaucoma"] and list(doc["results"][0]["referral"]) == ["glaucoma"]
    everything = run("screen", retina_jpeg, "--bundle", tiny_bundle)
    assert "referral covers only" not in everything.output


@pytest.mark.parametrize("option, value, says", [("--conditions", ",,", "names no condition"),
                                                 ("--threads", "-1", "--threads")])
def test_screen_refuses_a_bad_option_naming_it(tiny_bundle, retina_jpeg, option, value, says):
    res = CliRunner().invoke(cli, ["screen", str(retina_jpeg), "--bundle", str(tiny_bundle), option, value])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert says in res.output and "unknown condition" not in res.output and "openvino" not in res.output


def test_screen_with_nothing_screened_prints_no_rate(tiny_bundle, tmp_path):
    res = narrow_runner().invoke(cli, ["screen", str(tmp_path / "nope.jpg"), "--bundle", str(tiny_bundle)])
    assert res.exit_code == 1, res.output
    said = unwrapped(res.output)
    assert unwrapped("1 image: 0 no referral, 0 refer, 0 ungradable, 1 error.") in said, res.output
    assert "images/s" not in res.output and "time ms" in res.output  # the column (or the caption naming it)


def test_screen_with_a_broken_bundle_says_so(tmp_path, retina_jpeg):
    res = run("screen", retina_jpeg, "--bundle", tmp_path / "no-bundle")
    assert res.exit_code == 2 and "error" in res.output


def test_screen_errors_fit_80_columns_and_name_each_photo_once(tiny_bundle, retina_jpeg, tmp_path):
    """A photo that cannot be read, deep in a folder: its error line wraps to the terminal and names
    it once (the decoder's message starts with its path); its row shows the short name, so the
    table keeps room for the status."""
    folder = folder_wider_than_the_terminal(tmp_path)
    shutil.copy(retina_jpeg, folder / "a.jpg")
    broken = folder / "a-photo-from-the-old-camera.jpg"
    broken.write_bytes(retina_jpeg.read_bytes()[:5000])
    result = narrow_runner().invoke(cli, ["screen", str(folder), str(tmp_path / "missing.jpg"),
                                          "--bundle", str(tiny_bundle)], catch_exceptions=False)
    assert result.exit_code == 0 and widest_line(result.output) <= COLUMNS, result.output
    said = unwrapped(result.output)
    assert unwrapped(f"error {broken}: truncated JPEG") in said and said.count(str(broken)) == 1, result.output
    assert unwrapped(f"error {tmp_path / 'missing.jpg'}: no such file") in said and said.count("missing.jpg") == 2
    assert re.search(r"a-photo-from-the-old-camera\.jpg +error \(corrupt\)", result.output), result.output


def test_bundle_inspect_and_verify(tiny_bundle, tmp_path):
    res = run("bundle", "inspect", tiny_bundle)
    assert res.exit_code == 0 and "glaucoma" in res.output and "onnxruntime" in res.output
    assert json.loads(run("bundle", "inspect", tiny_bundle, "--json").stdout)["schema_version"] == 1
    assert run("bundle", "verify", tiny_bundle).exit_code == 0
    tampered = tmp_path / "tampered"
    shutil.copytree(tiny_bundle, tampered)
    prompts = tampered / "prompts.npz"
    data = bytearray(prompts.read_bytes())
    data[len(data) // 2] ^= 0xFF
    prompts.write_bytes(bytes(data))
    res = run("bundle", "verify", tampered)
    assert res.exit_code == 1 and "prompts.npz" in unwrapped(res.output)


def test_inspect_marks_a_student_auroc_on_fewer_than_10_positives_or_negatives():
    """The student's report card in a manifest: an AUROC on 2 positives is marked and footnoted."""
    import io

    from rich.console import Console

    from edge_retina.cli.bundle import _distillation_table

    def condition(n_pos, n_neg):
        return {"n_pos": n_pos, "n_neg": n_neg, "auroc_teacher": 0.42, "auroc_student": 0.41, "retention": None,
                "decision_agreement": 0.9}

    def shown(conditions):
        console = Console(width=COLUMNS, record=True, file=io.StringIO())
        console.print(_distillation_table({"held_out_images": 120, "conditions": conditions}))
        return [line.strip() for line in console.export_text().splitlines()]

    footnote = "? fewer than 10 positives or negatives: AUROC unreliable"
    few = shown({"hypertensive_retinopathy": condition(2, 118), "glaucoma": condition(40, 80)})
    assert [line.split()[2:4] for line in few if line.startswith(("hypertensive", "glaucoma"))] == [
        ["0.420?", "0.410?"], ["0.420", "0.410"]]
    assert few.count(footnote) == 1 and widest_line("\n".join(few)) <= COLUMNS
    assert footnote not in shown({"glaucoma": condition(40, 80), "cataract": {"retention": 0.97}})


def test_bundle_inspect_shows_a_damaged_bundle_and_names_the_damage(tiny_bundle, tiny_bundle_archive, tmp_path):
    """What a device maker needs from a bundle damaged in transfer: what it is, and which file is wrong."""
    damaged = Path(shutil.copytree(tiny_bundle, tmp_path / "damaged"))
    prompts = damaged / "prompts.npz"
    data = bytearray(prompts.read_bytes())
    data[len(data) // 2] ^= 0xFF
    prompts.write_bytes(bytes(data))
    [engine] = [p for p in (damaged / "engines").iterdir() if p.suffix == ".onnx"]
    engine.unlink()
    runner = narrow_runner()
    shown = runner.invoke(cli, ["bundle", "inspect", str(damaged)], catch_exceptions=False)
    said = unwrapped(shown.output)
    assert shown.exit_code == 1 and widest_line(shown.output) <= COLUMNS, shown.output
    assert "glaucoma" in said and "onnxruntime" in said and unwrapped("built by") in said, shown.output
    assert unwrapped("damaged prompts.npz: expected sha256 ") in said, shown.output
    assert unwrapped(f"damaged engines/{engine.name}: file is missing") in said, shown.output
    assert unwrapped("bundle DAMAGED (2 problems): it will not load or install") in said, shown.output
    as_json = json.loads(runner.invoke(cli, ["bundle", "inspect", str(damaged), "--json"]).stdout)
    assert as_json["schema_version"] == 1 and len(as_json["damage"]) == 2, as_json["damage"]
    assert json.loads(run("bundle", "inspect", tiny_bundle, "--json").stdout)["damage"] == []

    # An archive cut short in transfer: its manifest (the first member) is still shown.
    cut = tmp_path / "cut.erb.tar"
    content = tiny_bundle_archive.read_bytes().rstrip(b"\0")  # cut inside the last member, not in the padding
    cut.write_bytes(content[:-1000])
    shown = runner.invoke(cli, ["bundle", "inspect", str(cut)], catch_exceptions=False)
    assert shown.exit_code == 1 and "glaucoma" in shown.output, shown.output
    assert unwrapped(f"damaged {cut} is truncated or corrupt") in unwrapped(shown.output), shown.output
    assert widest_line(shown.output) <= COLUMNS, shown.output

    # Only a manifest that cannot be read leaves nothing to show: one message saying so.
    (damaged / "manifest.json").write_bytes(b'{"schema_version": 1, "model": {')
    refused = runner.invoke(cli, ["bundle", "inspect", str(damaged)], catch_exceptions=False)
    assert refused.exit_code == 2 and "glaucoma" not in refused.output, refused.output
    assert unwrapped(f"error: {damaged / 'manifest.json'} is not a valid bundle manifest: - malformed JSON") \
        in unwrapped(refused.output), refused.output


def test_device_bundle_and_prompt_tables_fit_80_columns(tiny_bundle):
    """Free text (a profile's title, a threshold's source, prompts) wraps in its column; the rest stays whole.
    A detection's reasons (a sentence each) wrap as lines."""
    runner = narrow_runner()
    for args, shown in ((["devices", "list"], ["jetson-orin-nano", "Raspberry"]),
                        (["devices", "detect", "--root", REPO / "tests/data/boards/agx-orin"],
                         ["jetson-agx-orin", "tensorrt does not import"]),
                        (["bundle", "inspect", tiny_bundle], ["glaucoma", "onnxruntime"]),
                        (["prompts", "show", tiny_bundle], ["glaucoma", "- a fundus photograph"])):
        result = runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert widest_line(result.output) <= COLUMNS, result.output
        assert all(text in result.output for text in shown), result.output


def without(*modules: str) -> str:
    """A python -c program running the CLI as if ``modules`` were not installed."""
    return (
        "import sys\n"
        f"for m in {modules!r}:\n"
        "    sys.modules[m] = None\n"
        "from edge_retina.cli.main import main\n"
        "sys.argv = ['edge-retina'] + sys.argv[1:]\n"
        "main()\n"
    )


# The runtime must not even import the host packages.
BLOCK_HOST = without("torch", "onnx", "onnxscript", "nncf", "sklearn", "converters", "calibration")


def test_runtime_screens_without_torch(tiny_bundle, retina_jpeg):
    proc = subprocess.run([sys.executable, "-c", BLOCK_HOST, "screen", str(retina_jpeg), "--bundle",
                           str(tiny_bundle), "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["gradable"] is True


def test_host_command_without_its_extra_names_the_extra():
    proc = subprocess.run([sys.executable, "-c", without("torch"), "demo"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert proc.returncode != 0
    assert unwrapped("pip install 'edge-retina[convert]'") in unwrapped(proc.stderr)


def test_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "edge_retina", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)
    assert proc.returncode == 0 and "screen" in proc.stdout and "bundle" in proc.stdout


def test_screen_heimed_folder_writes_a_row_per_image(tiny_bundle, shared_datasets, tmp_path):
    folder = shared_datasets / "heimed" / "images"
    expected = len(list(folder.glob("*.jpg")))
    out = tmp_path / "heimed.csv"
    res = run("screen", folder, "--bundle", tiny_bundle, "--out", out, "--json")
    assert res.exit_code == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == expected == 169
    assert sum(r["status"] == "error" for r in rows) == 0


def test_a_missing_teacher_option_is_one_message_naming_the_fix(tmp_path):
    """FLAIR needs its local text tower: the message says which --teacher-option, without a traceback
    (which -v shows)."""
    checkpoint = tmp_path / "flair_resnet.pth"
    checkpoint.write_bytes(b"")
    args = ["convert", "--family", "flair", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "bundle")]
    result = narrow_runner().invoke(cli, args)
    assert result.exit_code == 2 and one_error(result.output), result.output
    assert unwrapped("--teacher-option text_model_path=") in unwrapped(result.output)
    verbose = CliRunner().invoke(cli, ["-v", *args])
    assert verbose.exit_code == 1 and isinstance(verbose.exception, TypeError)


@pytest.mark.parametrize("family, checkpoint, fix", [("reference", "missing.pth", "checkpoint file not found"),
                                                     ("open_clip", "missing.pt", "open_clip checkpoint not found"),
                                                     ("open_clip", None, "--checkpoint PATH")])
def test_a_missing_or_unnamed_checkpoint_is_one_message(tmp_path, family, checkpoint, fix):
    args = ["convert", "--family", family, "--out", str(tmp_path / "bundle")]
    args += [] if checkpoint is None else ["--checkpoint", str(tmp_path / checkpoint)]
    result = narrow_runner().invoke(cli, args)
    assert result.exit_code == 2 and unwrapped(fix) in unwrapped(result.output) and one_error(result.output), \
        result.output
