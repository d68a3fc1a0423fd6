"""Latency benchmark mechanics on the tiny bundle: interleaving, stages, throughput, cold start,
the research baseline, and `edge-retina bench latency`."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from narrow_terminal import COLUMNS, folder_wider_than_the_terminal, narrow_runner, one_error, unwrapped, widest_line

from converters.research_baseline import ResearchPipeline
from edge_retina.bench import latency
from edge_retina.bench.parity import bundle_prompt_table
from edge_retina.bundle import load_bundle
from edge_retina.cli.bench import bench
from edge_retina.errors import EdgeRetinaError, MissingExtraError


class RecordingPipeline:
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def run(self, image):
        self.calls.append((self.name, Path(image).name))
        return {stage: 1.0 for stage in latency.STAGES}

    def prepared_tensor(self, image):
        return np.zeros((1, 3, 8, 8), np.float32)

    def run_engine(self, tensor):
        self.calls.append((self.name, "engine"))

    def close(self):
        pass


def test_pipelines_run_interleaved_in_rotating_order():
    calls = []
    a, b = RecordingPipeline("A", calls), RecordingPipeline("B", calls)
    results = latency.measure_interleaved([a, b], [Path("x.jpg"), Path("y.jpg")], iterations=2, warmup=1)
    timed = calls[4:]  # after one warm-up of each pipeline and its engine
    assert timed == [("A", "x.jpg"), ("A", "engine"), ("B", "x.jpg"), ("B", "engine"),
                     ("A", "y.jpg"), ("A", "engine"), ("B", "y.jpg"), ("B", "engine"),
                     ("B", "x.jpg"), ("B", "engine"), ("A", "x.jpg"), ("A", "engine"),
                     ("B", "y.jpg"), ("B", "engine"), ("A", "y.jpg"), ("A", "engine")]
    assert all(len(r.stages_ms["total"]) == 4 and len(r.engine_ms) == 4 for r in results.values())


def test_summary_statistics():
    s = latency.summary(list(range(1, 101)))
    assert (s["n"], s["median"], s["min"], s["max"], s["mean"]) == (100, 50.5, 1, 100, 50.5)
    assert s["p90"] == pytest.approx(90.1) and s["p99"] == pytest.approx(99.01)


@pytest.fixture(scope="module")
def images(retina_jpeg):
    return [retina_jpeg, retina_jpeg]


def test_run_latency_on_the_tiny_bundle(tiny_bundle, images, tmp_path):
    engines = latency.select_engines(tiny_bundle)
    report = latency.run_latency(tiny_bundle, engines, images, iterations=2, threads=1, streams=2, workers=2,
                                 cold_runs=1)
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data["pipelines"]) == {"onnxruntime/fp32/teacher", "openvino/fp32/teacher"}
    assert data["baseline"] == "onnxruntime/fp32/teacher"
    assert data["machine"]["logical_cores"] >= 1 and "onnxruntime" in data["machine"]["libraries"]
    assert data["workers"] == 2
    for name, p in data["pipelines"].items():
        assert set(p["stages_ms"]) == set(latency.STAGES)
        assert p["stages_ms"]["total"]["n"] == 4 and len(p["engine_samples_ms"]) == 4
        stages = p["stages_ms"]
        assert stages["total"]["median"] >= stages["inference"]["median"] > 0
        assert p["cpu_ms"]["n"] == 4 and p["cpu_ms"]["median"] > 0
        assert p["throughput_images_per_s"]["batch1"] > 0 and p["throughput_images_per_s"]["streams_2"] > 0
        assert p["throughput_images_per_s"]["pipeline"] > 0
        cold = p["cold_start"]["runs"][0]
        assert cold["process_to_first_result_ms"] > cold["load_to_first_result_ms"] > 0
        assert 30 < cold["peak_rss_mb"] < 4000
    assert data["pipelines"]["onnxruntime/fp32/teacher"]["speedup_vs_baseline"] == 1.0
    headers, rows = latency.latency_table_rows(data)
    assert len(rows) == 2 and len(rows[0]) == len(headers) and rows[0][2] == "1.00x / 1.00x"
    headers, rows = latency.system_table_rows(data)
    assert len(rows) == 2 and all(cell != "-" for cell in rows[0])
    from converters.report_html import write_report

    page = write_report(tmp_path / "latency.html", latency=data).read_text()
    assert page.count("<img") == 2 and "onnxruntime/fp32/teacher" in page and "peak RSS" in page


def test_system_table_names_one_stream_and_one_worker_in_the_singular():
    headers, _ = latency.system_table_rows({"streams": 1, "workers": 1, "pipelines": {}})
    assert "1 stream img/s" in headers and "1 worker img/s" in headers
    headers, _ = latency.system_table_rows({"streams": 2, "workers": 4, "pipelines": {}})
    assert "2 streams img/s" in headers and "4 workers img/s" in headers


def test_research_baseline_is_compared_with_the_engine(tiny_bundle, images):
    from tiny_bundle import _tiny_encoder

    bundle = load_bundle(tiny_bundle)
    research = ResearchPipeline(_tiny_encoder(), bundle.manifest.input, bundle_prompt_table(bundle), threads=1)
    engines = latency.select_engines(tiny_bundle, backend="onnxruntime")
    report = latency.run_latency(tiny_bundle, engines, images, iterations=1, streams=1, cold_runs=0,
                                 extra_pipelines=[research])
    assert report.baseline == research.name
    assert research.prepared_tensor(images[0]).shape == (1, 3, *bundle.manifest.input.size)
    assert set(report.pipelines[research.name].stages_ms) == set(latency.STAGES)
    assert report.speedup("onnxruntime/fp32/teacher") > 0


def test_an_image_the_research_baseline_cannot_read_is_left_out_of_every_pipeline(tiny_bundle, retina_jpeg,
                                                                                  tmp_path):
    """The runtime reads a DICOM, PIL does not: no traceback, and both sides are timed on the same images."""
    pytest.importorskip("pydicom")
    from dicom_support import jpeg_to_dicom
    from tiny_bundle import _tiny_encoder

    dicom = jpeg_to_dicom(retina_jpeg, tmp_path / "capture.dcm")
    bundle = load_bundle(tiny_bundle)
    research = ResearchPipeline(_tiny_encoder(), bundle.manifest.input, bundle_prompt_table(bundle), threads=1)
    engines = latency.select_engines(tiny_bundle, backend="onnxruntime")
    report = latency.run_latency(tiny_bundle, engines, [retina_jpeg, dicom], iterations=1, streams=1, cold_runs=0,
                                 extra_pipelines=[research])
    assert report.images == [str(retina_jpeg)]
    assert report.left_out == [f"{dicom}: the research baseline cannot read it (not a format PIL opens)"]
    assert {len(p.stages_ms["total"]) for p in report.pipelines.values()} == {1}


def test_latency_command_names_left_out_images_once_in_80_columns(tiny_bundle, retina_jpeg, tmp_path):
    """The title counts the images timed, not those given; a left-out image's line wraps to the
    terminal and names it once, as the JSON does."""
    folder = folder_wider_than_the_terminal(tmp_path)
    for name in ("a.jpg", "b.jpg"):
        shutil.copy(retina_jpeg, folder / name)
    broken = folder / "a-photo-from-the-old-camera.jpg"
    broken.write_bytes(retina_jpeg.read_bytes()[:5000])
    out = tmp_path / "latency.json"
    result = narrow_runner().invoke(bench, ["latency", "--bundle", str(tiny_bundle), "--images", str(folder),
                                            "--backend", "openvino", "--iterations", "1", "--streams", "1",
                                            "--cold-runs", "0", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0 and widest_line(result.output) <= COLUMNS, result.output
    said = unwrapped(result.output)
    assert unwrapped("(2 images x 1 round,") in said, result.output  # the images timed, not those given
    assert unwrapped(f"left out {broken}: truncated JPEG") in said and said.count(str(broken)) == 1, result.output
    left_out = json.loads(out.read_text())["left_out"]
    assert len(left_out) == 1 and left_out[0].startswith(f"{broken}: truncated JPEG") and left_out[0].count(
        str(broken)) == 1


def test_max_images_counts_only_images_that_can_be_timed(tiny_bundle, retina_jpeg, tmp_path):
    broken = tmp_path / "0-broken.jpg"
    broken.write_bytes(retina_jpeg.read_bytes()[:5000])
    copies = [shutil.copy(retina_jpeg, tmp_path / f"{i}-photo.jpg") for i in (1, 2, 3)]
    engines = latency.select_engines(tiny_bundle, backend="onnxruntime")
    report = latency.run_latency(tiny_bundle, engines, [broken, *copies], iterations=1, streams=1, cold_runs=0,
                                 max_images=2)
    assert report.images == [str(p) for p in copies[:2]]  # the broken photo took no place
    assert len(report.left_out) == 1 and report.left_out[0].startswith(f"{broken}: truncated JPEG")


def test_research_baseline_without_torch_names_the_extra(monkeypatch):
    from edge_retina.extras import import_for

    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "converters.research_baseline")
    with pytest.raises(MissingExtraError, match=r"'convert' extra .*pip install 'edge-retina\[convert\]'"):
        import_for("converters.research_baseline", "the research-code baseline")


def test_latency_command_json(tiny_bundle, retina_jpeg, tmp_path):
    out = tmp_path / "latency.json"
    result = CliRunner().invoke(bench, ["latency", "--bundle", str(tiny_bundle), "--images", str(retina_jpeg),
                                        "--backend", "openvino", "--iterations", "2", "--streams", "1",
                                        "--cold-runs", "0", "--json", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data["pipelines"]) == ["openvino/fp32/teacher"] and json.loads(out.read_text()) == data
    bad = CliRunner().invoke(bench, ["latency", "--bundle", str(tiny_bundle), "--images", str(tmp_path / "none.jpg")])
    assert bad.exit_code == 2 and "none.jpg" in unwrapped(bad.output)  # in a folded path
    bad = CliRunner().invoke(bench, ["latency", "--bundle", str(tiny_bundle), "--images", str(retina_jpeg),
                                     "--baseline", "tensorrt/fp16/teacher"])
    assert bad.exit_code == 2 and unwrapped("neither 'research' nor one of the engines") in unwrapped(bad.output)


def test_latency_command_refuses_an_unwritable_out_before_benchmarking(tiny_bundle, retina_jpeg, monkeypatch):
    monkeypatch.setattr("edge_retina.bench.latency.run_latency", lambda *a, **k: pytest.fail("benchmarked first"))
    result = CliRunner().invoke(bench, ["latency", "--bundle", str(tiny_bundle), "--images", str(retina_jpeg),
                                        "--out", "/proc/nope.json"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert unwrapped("cannot write the report to /proc/nope.json") in unwrapped(result.output)


@pytest.mark.parametrize("report", ["--out", "--html"])
def test_latency_command_keeps_an_earlier_report_unless_overwrite(report, tiny_bundle, retina_jpeg, tmp_path,
                                                                  monkeypatch):
    """Like screen's --out: refused before the benchmark runs, and replaced with --overwrite."""
    def benchmark(*args, **kwargs):
        raise EdgeRetinaError("the benchmark ran")

    monkeypatch.setattr("edge_retina.bench.latency.run_latency", benchmark)
    earlier = tmp_path / ("earlier-report.json" if report == "--out" else "earlier-report.html")
    earlier.write_text("an earlier run's report\n")
    args = ["latency", "--bundle", str(tiny_bundle), "--images", str(retina_jpeg), report, str(earlier)]
    kept = narrow_runner().invoke(bench, args)
    assert kept.exit_code == 2 and widest_line(kept.output) <= COLUMNS, kept.output
    assert unwrapped(f"cannot write the report to {earlier}: it exists; move it away or pass --overwrite to "
                     "replace it") in unwrapped(kept.output), kept.output
    assert earlier.read_text() == "an earlier run's report\n"
    replaced = narrow_runner().invoke(bench, [*args, "--overwrite"])
    assert unwrapped("the benchmark ran") in unwrapped(replaced.output), replaced.output


@pytest.mark.parametrize("command", ["latency", "parity"])
@pytest.mark.parametrize("option, name, says", [("--out", "r.csv", "the report is JSON; name a .json file"),
                                                ("--out", "report", "the report is JSON; name a .json file"),
                                                ("--html", "r.json", "the report is HTML; name a .html or .htm file"),
                                                ("--html", "report", "the report is HTML; name a .html or .htm file")])
def test_a_report_not_named_for_its_format_is_refused_before_benchmarking(command, option, name, says, tiny_bundle,
                                                                         retina_jpeg, tmp_path, monkeypatch):
    """`--out r.csv` would hold JSON under a CSV's name, `--html r.json` HTML under a JSON's."""
    monkeypatch.setattr("edge_retina.bench.latency.run_latency", lambda *a, **k: pytest.fail("benchmarked first"))
    inputs = ["--images", str(retina_jpeg)] if command == "latency" else ["--labels", str(tmp_path / "labels.csv")]
    report = tmp_path / name
    result = narrow_runner().invoke(bench, [command, "--bundle", str(tiny_bundle), *inputs, option, str(report)])
    assert result.exit_code == 2 and one_error(result.output), result.output
    assert unwrapped(f"error: cannot write the report to {report}: {says}") in unwrapped(result.output), result.output
    assert not report.exists()


def test_the_kind_of_a_misnamed_report_is_not_called_format():
    """``format`` would shadow the built-in in the helper and in its callers' loops."""
    from edge_retina.out_paths import misnamed_reason

    assert misnamed_reason(Path("R.JSON"), kind="JSON", suffixes=(".json",)) is None
    assert misnamed_reason(Path("r.csv"), kind="JSON", suffixes=(".json",)) == "the report is JSON; name a .json file"


def test_parity_command_keeps_an_earlier_report_unless_overwrite(tiny_bundle, tmp_path):
    earlier = tmp_path / "parity.json"
    earlier.write_text("{}\n")
    kept = CliRunner().invoke(bench, ["parity", "--bundle", str(tiny_bundle), "--labels", str(tmp_path / "labels.csv"),
                                      "--out", str(earlier)])
    assert kept.exit_code == 2 and unwrapped("it exists; move it away or pass --overwrite") in unwrapped(kept.output)
