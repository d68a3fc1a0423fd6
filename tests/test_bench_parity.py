"""Parity runs: comparing embeddings, the labels CSV, and `edge-retina bench parity`'s gate exit codes."""
from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console
from narrow_terminal import COLUMNS, folder_wider_than_the_terminal, narrow_runner, unwrapped, widest_line

from edge_retina.bench import parity as parity_module
from edge_retina.bench.labels import LabelledImages, read_labels_csv, write_labels_csv
from edge_retina.cli.bench import bench
from edge_retina.console_tables import parity_console_tables
from edge_retina.errors import EdgeRetinaError
from edge_retina.prompt_table import PromptTable


def two_class_table() -> PromptTable:
    prompts = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]], np.float32)
    return PromptTable(["normal", "glaucoma"], "normal", prompts, np.array([0, 1]), "mean_renormalised", 10.0)


def synthetic_embeddings(rng, n=200, noise=0.0):
    """Embeddings whose glaucoma score follows the label; ``noise`` blurs a copy of them."""
    y = np.r_[np.ones(n // 2), np.zeros(n // 2)]
    reference = rng.normal(size=(n, 4)) * 0.3
    reference[:, 1] += 0.8 * y
    reference[:, 0] += 0.8 * (1 - y)
    return y, reference, reference + noise * rng.normal(size=reference.shape)


def degraded_report(drop_noise=1.0):
    rng = np.random.default_rng(0)
    y, reference, degraded = synthetic_embeddings(rng, noise=drop_noise)
    labels = {"glaucoma": y, "cataract": np.full(len(y), np.nan)}  # cataract: not in the table, left out
    return parity_module.compare_embeddings(
        "teacher", {"teacher": reference, "same": reference.copy(), "degraded": degraded}, labels,
        two_class_table(), {"glaucoma": 0.5, "normal": None}, replicates=300)


def test_compare_embeddings_finds_a_drop_and_not_a_copy():
    report = degraded_report()
    assert report.models == ["teacher", "same", "degraded"]
    (glaucoma,) = report.conditions
    assert (glaucoma.condition, glaucoma.n_pos, glaucoma.n_neg) == ("glaucoma", 100, 100)
    same, degraded = glaucoma.models["same"], glaucoma.models["degraded"]
    assert same.bootstrap.delta == 0.0 and same.agreement == 1.0 and same.delong.p_value == 1.0
    assert degraded.bootstrap.delta < -0.02 and degraded.bootstrap.ci_high < 0 and degraded.delong.p_value < 0.05
    assert degraded.agreement < 1.0 and 0 <= degraded.sensitivity <= 1
    assert glaucoma.models["teacher"].bootstrap is None
    np.testing.assert_allclose(report.cosine["same"], 1.0)
    assert report.cosine["degraded"].min() < 0.99
    assert report.failures(0.005) == [
        f"glaucoma: degraded ΔAUROC {degraded.bootstrap.delta:+.4f} against teacher (max drop 0.005)"]
    assert report.failures(1.0) == []
    # Against another baseline (a student's engines against the student), the reference is not gated.
    assert report.failures(0.005, baseline="degraded") == []
    assert degraded.retention == pytest.approx((degraded.auroc - 0.5) / (glaucoma.models["teacher"].auroc - 0.5))
    assert same.retention == pytest.approx(1.0) and glaucoma.models["teacher"].retention is None
    data = json.loads(json.dumps(report.to_dict()))
    assert data["conditions"][0]["models"]["degraded"]["delta_ci95"][1] < 0
    assert data["cosine_to_reference"]["same"]["min"] == pytest.approx(1.0)


def test_table_titles_count_one_image_and_one_positive_in_the_singular():
    report = degraded_report()
    one = dataclasses.replace(report, n_images=1,
                              conditions=[dataclasses.replace(report.conditions[0], n_pos=1, n_neg=1)])
    titles = [table.title for table in parity_module.parity_tables(one)]
    assert titles[0].startswith("glaucoma: 1 positive / 1 negative, ") and titles[-1].endswith("(1 image)"), titles


def report_on(n_pos, n_neg):
    """A teacher and a noisy engine on ``n_pos`` glaucoma positives and ``n_neg`` negatives."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    reference = rng.normal(size=(len(y), 4)) * 0.3
    reference[:, 1] += 0.8 * y
    return parity_module.compare_embeddings(
        "teacher", {"teacher": reference, "engine": reference + 0.2 * rng.normal(size=reference.shape)},
        {"glaucoma": y}, two_class_table(), {"glaucoma": 0.5, "normal": None}, replicates=100)


FOOTNOTE = "? fewer than 10 positives or negatives: AUROC unreliable"


@pytest.mark.parametrize("n_pos, n_neg, few", [(2, 118, True), (9, 111, True), (60, 3, True), (10, 110, False)])
def test_an_auroc_on_fewer_than_10_positives_or_negatives_is_marked_and_footnoted(n_pos, n_neg, few):
    """ODIR's hypertensive retinopathy had 2 positives among 120 photos: its AUROC of 0.42 said
    nothing, and the table must not let it read as a measurement."""
    report = report_on(n_pos, n_neg)
    condition_table, cosine_table = parity_module.parity_tables(report)
    assert [row[1].endswith("?") for row in condition_table.rows] == [few, few]
    assert condition_table.footnote == (FOOTNOTE if few else None) and cosine_table.footnote is None
    [condition] = report.to_dict()["conditions"]
    assert (condition["n_pos"], condition["n_neg"], condition["few_labels"]) == (n_pos, n_neg, few)

    console = Console(width=COLUMNS, record=True, file=io.StringIO())
    for table in parity_console_tables(parity_module.parity_tables(report), width=COLUMNS):
        console.print(table)
    lines = [line.rstrip() for line in console.export_text().splitlines()]
    assert lines.count(FOOTNOTE) == few and widest_line("\n".join(lines)) <= COLUMNS  # one line of its own


def test_one_footnote_for_a_table_with_any_row_on_few_labels():
    """Every table that marks an AUROC (parity, bundle inspect's student card, the student's report,
    BENCHMARKS' parity table) asks this one function whether it needs the footnote."""
    from edge_retina.bench.metrics import few_labels_footnote

    assert few_labels_footnote([(40, 80), (2, 118)]) == FOOTNOTE
    assert few_labels_footnote(iter([(40, 80), (10, 10)])) is None and few_labels_footnote([]) is None


def test_labels_csv_round_trip(tmp_path):
    images = tmp_path / "photos"
    images.mkdir()
    labelled = LabelledImages([images / "a.jpg", images / "b.jpg", images / "c.jpg"],
                              {"glaucoma": np.array([1.0, 0.0, np.nan]), "cataract": np.array([np.nan, 1.0, 0.0])})
    path = write_labels_csv(labelled, tmp_path / "labels.csv")
    assert path.read_text().splitlines() == ["file,glaucoma,cataract", "photos/a.jpg,1,", "photos/b.jpg,0,1",
                                             "photos/c.jpg,,0"]
    back = read_labels_csv(path)
    assert back.paths == labelled.paths
    for condition, y in labelled.labels.items():
        np.testing.assert_array_equal(back.labels[condition], y)


@pytest.mark.parametrize("text, message", [
    ("image,glaucoma\na.jpg,1\n", "'file' column"),
    ("file,glaucoma\na.jpg,yes\n", "expected 0, 1 or blank"),
    ("file,glaucoma\n", "no rows"),
    ("file,glaucoma\na.jpg,1\n".encode("utf-16"), "not UTF-8 text"),  # a spreadsheet's "Unicode text"
    ("file,glaucoma\n" + "a" * 200_000 + ",1\n", "not a CSV file"),  # csv's field size limit
])
def test_bad_labels_csv_is_refused(tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(EdgeRetinaError, match=message):
        read_labels_csv(path)


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory, retina_rgb):
    """Ten variants of a real fundus photo (flips, brightness, zoom) with made-up glaucoma labels."""
    folder = tmp_path_factory.mktemp("labelled")
    small = cv2.resize(retina_rgb, (400, 400), interpolation=cv2.INTER_AREA)
    rows = ["file,glaucoma,cataract"]
    for i in range(10):
        image = small[:, ::-1] if i % 2 else small
        image = np.clip(image.astype(np.float32) * (0.7 + 0.06 * i), 0, 255).astype(np.uint8)
        margin = 4 * i
        image = cv2.resize(image[margin:400 - margin, margin:400 - margin], (400, 400))
        cv2.imwrite(str(folder / f"img{i}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        rows.append(f"img{i}.jpg,{i % 2},{'' if i < 4 else (i // 2) % 2}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def invoke(*args):
    return CliRunner().invoke(bench, [str(a) for a in args], catch_exceptions=False)


def test_parity_against_the_fp32_engine_passes_the_gate(tiny_bundle, labelled_folder, tmp_path):
    html = tmp_path / "report.html"
    result = invoke("parity", "--bundle", tiny_bundle, "--labels", labelled_folder / "labels.csv", "--reference",
                    "fp32", "--replicates", "200", "--json", "--html", html)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["gate"] == "pass" and data["reference"] == "onnxruntime/fp32/teacher"
    assert {c["condition"] for c in data["conditions"]} == {"glaucoma", "cataract"}
    openvino = data["conditions"][0]["models"]["openvino/fp32/teacher"]
    assert abs(openvino["delta_auroc"]) < 1e-6 and openvino["decision_agreement"] == 1.0
    assert data["cosine_to_reference"]["openvino/fp32/teacher"]["min"] > 0.9999
    assert all(c["few_labels"] for c in data["conditions"])  # 10 photos
    page = html.read_text()
    assert page.count("<img") >= 3 and "PASS" in page and "glaucoma" in page
    assert page.count(f'<p class="footnote">{FOOTNOTE}</p>') == 2


def test_parity_gate_fails_with_exit_1(tiny_bundle, labelled_folder, monkeypatch):
    monkeypatch.setattr(parity_module, "bundle_parity", lambda *a, **k: degraded_report())
    result = invoke("parity", "--bundle", tiny_bundle, "--labels", labelled_folder / "labels.csv", "--reference",
                    "fp32", "--max-drop", "0.01")
    assert result.exit_code == 1
    assert unwrapped("parity gate FAILED") in unwrapped(result.output) and "degraded" in result.output
    assert invoke("parity", "--bundle", tiny_bundle, "--labels", labelled_folder / "labels.csv", "--reference",
                  "fp32", "--max-drop", "0.9").exit_code == 0


def test_parity_names_a_skipped_photo_as_the_labels_csv_lists_it(tiny_bundle, labelled_folder, retina_jpeg,
                                                                  tmp_path):
    """A labelled photo that cannot be read, listed by a relative path in a CSV deep in a folder: its
    "skipped" line names it as the CSV lists it, once (the decoder's message starts with its full path),
    and fits 80 columns; the JSON names it the same way, beside the CSV's absolute path."""
    folder = folder_wider_than_the_terminal(tmp_path)
    for image in labelled_folder.glob("*.jpg"):
        shutil.copy(image, folder)
    listed = "old-camera/a-photo-from-the-old-camera.jpg"
    broken = folder / listed
    broken.parent.mkdir()
    broken.write_bytes(retina_jpeg.read_bytes()[:5000])
    labels = folder / "labels.csv"
    labels.write_text((labelled_folder / "labels.csv").read_text() + f"{listed},1,0\n")
    out = tmp_path / "parity.json"
    result = narrow_runner().invoke(bench, ["parity", "--bundle", str(tiny_bundle), "--labels", str(labels),
                                            "--reference", "fp32", "--replicates", "100", "--out", str(out)],
                                    catch_exceptions=False)
    assert result.exit_code == 0 and widest_line(result.output) <= COLUMNS, result.output
    said = unwrapped(result.output)
    assert unwrapped(f"skipped {listed}: truncated JPEG") in said, result.output
    assert said.count(broken.name) == 1 and unwrapped(str(folder)) not in said, result.output
    data = json.loads(out.read_text())
    assert data["labels"] == str(labels)
    assert len(data["skipped"]) == 1 and data["skipped"][0].startswith(f"{listed}: truncated JPEG")
    assert str(folder) not in data["skipped"][0]


def test_parity_on_no_readable_photo_says_why(tiny_bundle, tmp_path):
    (tmp_path / "notes.jpg").write_text("not a photo")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,glaucoma\nnotes.jpg,1\nmissing.jpg,0\n")
    result = invoke("parity", "--bundle", tiny_bundle, "--labels", labels, "--reference", "fp32")
    assert result.exit_code == 2, result.output
    assert unwrapped("none of the 2 labelled images could be read: notes.jpg: not an image file") \
        in unwrapped(result.output), result.output
    assert unwrapped("missing.jpg: ") in unwrapped(result.output)


def test_parity_cannot_run_exits_2(tiny_bundle, labelled_folder, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("image,glaucoma\na.jpg,1\n")
    result = invoke("parity", "--bundle", tiny_bundle, "--labels", bad, "--reference", "fp32")
    assert result.exit_code == 2 and unwrapped("'file' column") in unwrapped(result.output)
    result = invoke("parity", "--bundle", tmp_path / "nowhere", "--labels", labelled_folder / "labels.csv")
    assert result.exit_code == 2 and unwrapped("no bundle") in unwrapped(result.output)
    # The tiny bundle's teacher family is not a real one: named, not a traceback.
    result = invoke("parity", "--bundle", tiny_bundle, "--labels", labelled_folder / "labels.csv")
    assert result.exit_code == 2
    assert unwrapped("cannot load the bundle's teacher (test-tiny)") in unwrapped(result.output)


def test_labels_command_refuses_an_out_it_cannot_write(tmp_path):
    (tmp_path / "notes.txt").write_text("a file where a folder is needed")
    out = tmp_path / "notes.txt" / "labels.csv"
    result = invoke("labels", "--dataset", "rimone", "--datasets", tmp_path, "--out", out)
    assert result.exit_code == 2, result.output
    assert unwrapped(f"cannot write the labels CSV to {out}: {tmp_path}/notes.txt is not a folder") \
        in unwrapped(result.output)


def test_labels_command_writes_a_shared_dataset_split(shared_datasets, tmp_path):
    """A shared dataset's split as a labels CSV; the line saying so fits 80 columns, however long its path."""
    out = folder_wider_than_the_terminal(tmp_path) / "rimone-test.csv"
    result = narrow_runner().invoke(bench, ["labels", "--dataset", "rimone", "--datasets", str(shared_datasets),
                                            "--limit", "30", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0 and widest_line(result.output) <= COLUMNS, result.output
    assert unwrapped(f"{out}: 30 images (glaucoma ") in unwrapped(result.output), result.output
    labelled = read_labels_csv(out)
    assert len(labelled.paths) == 30 and all(p.is_file() for p in labelled.paths)
    assert set(np.unique(labelled.labels["glaucoma"])) == {0.0, 1.0}
    one = narrow_runner().invoke(bench, ["labels", "--dataset", "rimone", "--datasets", str(shared_datasets),
                                         "--limit", "1", "--out", str(tmp_path / "one.csv")], catch_exceptions=False)
    assert one.exit_code == 0 and unwrapped("one.csv: 1 image (glaucoma ") in unwrapped(one.output), one.output


DEVICE = (  # the bench group as on a device: no host packages installed
    "import sys\n"
    "for m in ('torch', 'sklearn', 'scipy', 'matplotlib', 'converters', 'onnx'):\n"
    "    sys.modules[m] = None\n"
    "from edge_retina.cli.bench import bench\n"
    "bench()\n"
)


def test_fp32_parity_runs_on_a_device_and_host_options_name_the_extra(tiny_bundle, labelled_folder):
    common = ["parity", "--bundle", str(tiny_bundle), "--labels", str(labelled_folder / "labels.csv"),
              "--replicates", "100"]
    proc = subprocess.run([sys.executable, "-c", DEVICE, *common, "--reference", "fp32", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["gate"] == "pass"
    for extra_args in (["--reference", "teacher"], ["--reference", "fp32", "--html", "r.html"]):
        proc = subprocess.run([sys.executable, "-c", DEVICE, *common, *extra_args], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2 and unwrapped("pip install 'edge-retina[convert]'") in unwrapped(proc.stderr), \
            proc.stderr


def test_a_reference_with_its_own_input_spec_sees_images_prepared_its_way(tiny_bundle, retina_jpeg):
    from edge_retina.bench.labels import LabelledImages
    from edge_retina.bench.parity import bundle_parity
    from edge_retina.preprocess import InputSpec

    seen_shapes = []

    def embed(tensors):
        seen_shapes.append(tensors.shape)
        rng = np.random.default_rng(0)
        return rng.normal(size=(len(tensors), 32)).astype(np.float32)

    labelled = LabelledImages([retina_jpeg, retina_jpeg], {"glaucoma": np.array([1.0, 0.0])})
    bundle_parity(tiny_bundle, labelled, reference=("big teacher", embed, InputSpec(size=(128, 128))),
                  replicates=10)
    bundle_parity(tiny_bundle, labelled, reference=("same-size reference", embed), replicates=10)
    assert seen_shapes[0] == (2, 3, 128, 128)  # its own spec, not the bundle's 96x96
    assert seen_shapes[1] == (2, 3, 96, 96)


def test_label_columns_that_are_not_conditions_are_ignored_and_listed(tiny_bundle, labelled_folder, tmp_path):
    """docs/LABELS.md: metadata columns (here an image width) are ignored, not refused, and the report names them."""
    rows = (labelled_folder / "labels.csv").read_text().splitlines()
    with_width = [rows[0] + ",width"] + [row + ",3072" for row in rows[1:]]
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(with_width).replace("img", str(labelled_folder / "img")) + "\n")
    result = invoke("parity", "--bundle", tiny_bundle, "--labels", labels, "--reference", "fp32",
                    "--replicates", "200", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ignored_label_columns"] == ["width"]
    assert {c["condition"] for c in data["conditions"]} == {"glaucoma", "cataract"}
    assert unwrapped("ignored label columns (not conditions of this bundle): width") in unwrapped(result.stderr)


def test_cached_pixels_normalise_to_the_tensors_prepare_gives_bit_for_bit(retina_jpeg, tmp_path):
    """Caches keep prepare_pixels' uint8 pixels (a quarter of the bytes) and normalise them on load: the
    engines' cache keys hash those tensors, so they must be exactly what preparing each image gives."""
    from edge_retina.preprocess import InputSpec, Preprocessor

    preprocessor = Preprocessor(InputSpec(size=(96, 128)))
    mirrored = tmp_path / "mirrored.png"
    cv2.imwrite(str(mirrored), cv2.imread(str(retina_jpeg))[:, ::-1])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(retina_jpeg.read_bytes()[:3000])
    pixels, kept, skipped = parity_module.prepare_pixels(preprocessor, [retina_jpeg, broken, mirrored])
    assert pixels.dtype == np.uint8 and pixels.shape == (2, 96, 128, 3) and kept == [0, 2] and len(skipped) == 1
    one_by_one = np.concatenate([preprocessor.prepare(p).tensor for p in (retina_jpeg, mirrored)])
    assert preprocessor.normalise(pixels).tobytes() == one_by_one.tobytes()
