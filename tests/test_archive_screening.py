"""Archive screening: sources, resumable Parquet results, the worker, and one run on a local Ray."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from narrow_terminal import COLUMNS, narrow_runner, unwrapped, widest_line

pytest.importorskip("ray")

from edge_retina.archive_screening import cli as archive_cli  # noqa: E402
from edge_retina.archive_screening.results import read_results, write_part  # noqa: E402
from edge_retina.archive_screening.run import ArchiveProgress, pending_work  # noqa: E402
from edge_retina.archive_screening.sources import expand_sources  # noqa: E402
from edge_retina.archive_screening.worker import SKIPPED, ScreeningWorker  # noqa: E402
from edge_retina.cli.main import cli  # noqa: E402


@pytest.fixture(scope="module")
def photos(tmp_path_factory, retina_rgb):
    """Four distinct photos, a DICOM one and a file that is not an image."""
    folder = tmp_path_factory.mktemp("archive") / "photos"
    (folder / "clinic-b").mkdir(parents=True)
    for i, side in enumerate((320, 400, 480)):
        photo = cv2.resize(retina_rgb, (side, side), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"IMG_{i}.jpg"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "clinic-b" / "IMG_3.png"), cv2.cvtColor(retina_rgb[::4, ::4], cv2.COLOR_RGB2BGR))
    pytest.importorskip("pydicom")
    from dicom_support import jpeg_to_dicom

    jpeg_to_dicom(folder / "IMG_0.jpg", folder / "clinic-b" / "IMG_4.dcm", laterality="L")
    (folder / "clinic-b" / "notes.jpg").write_text("not a photo")
    return folder


@pytest.fixture(scope="module")
def worker(tiny_bundle):
    w = ScreeningWorker(tiny_bundle, backend="onnxruntime", threads=1)
    yield w
    w.close()


def test_sources_folders_globs_lists_and_uris(photos, tmp_path):
    (photos.parent / "paths.csv").write_text(f"path\nIMG_0.jpg\n{photos / 'IMG_1.jpg'}\n")
    table = expand_sources([str(photos / "IMG_*.jpg"), str(photos.parent / "paths.csv"), f"file://{photos}/clinic-b",
                            str(tmp_path / "missing")])
    rows = table.to_pylist()
    sources = [r["source"] for r in rows if r["problem"] is None]
    assert len(sources) == len(set(sources)) == 3 + 1 + 3  # the list's two photos are the glob's: once
    assert str(photos.parent / "IMG_0.jpg") in sources  # relative to the list (which names a missing file)
    assert f"file://{photos}/clinic-b/IMG_4.dcm" in sources
    assert [r["problem_code"] for r in rows if r["problem"]] == ["not_found"]


def test_worker_screens_skips_done_and_reports_errors(worker, photos, tmp_path):
    out = tmp_path / "results.parquet"
    sources = expand_sources([str(photos), f"file://{photos}/IMG_1.jpg", str(photos / "gone.jpg")])
    first = worker(pending_work(sources, out, worker.provenance["bundle_sha256"]))
    assert first.schema == worker.schema and SKIPPED not in first.column("status").to_pylist()
    by_name = {r["source"].rsplit("/", 1)[-1]: r for r in first.to_pylist()}
    assert by_name["notes.jpg"]["error_code"] == "not_an_image" and by_name["notes.jpg"]["sha256"]
    assert by_name["gone.jpg"]["error_code"] == "not_found" and by_name["gone.jpg"]["sha256"] is None
    assert by_name["IMG_4.dcm"]["eye"] == "left" and by_name["IMG_4.dcm"]["patient_id"]
    assert by_name["IMG_4.dcm"]["p_glaucoma"] == by_name["IMG_0.jpg"]["p_glaucoma"]  # the JPEG it wraps

    # A run killed after writing part of its rows (and in the middle of writing another part):
    write_part(out, first.slice(0, 3))
    (out / ".part-123.parquet.partial").write_bytes(b"PAR1 half a part")
    second = worker(pending_work(sources, out, worker.provenance["bundle_sha256"]))
    statuses = second.column("status").to_pylist()
    assert statuses.count(SKIPPED) == 3
    write_part(out, second.filter(pa.compute.not_equal(second.column("status"), SKIPPED)))
    rows = read_results(out).column("source").to_pylist()
    assert sorted(rows) == sorted(first.column("source").to_pylist())  # every photo exactly once

    # A replaced file (new content, same path) is screened again; a different bundle sees nothing done.
    todo = pending_work(sources, out, "another-bundle")
    assert not any(todo.column("done").to_pylist())


def test_archive_screen_on_local_ray_then_rerun_then_summary(tiny_bundle, photos, tmp_path):
    import tempfile

    from edge_retina.archive_screening.run import connect

    out = tmp_path / "results.parquet"
    args = ["archive", "screen", str(photos), str(photos / "missing.jpg"), "--bundle", str(tiny_bundle),
            "--out", str(out), "--batch-size", "2", "--backend", "onnxruntime"]
    ray_folders = set(Path(tempfile.gettempdir()).glob("edge-retina-ray-*"))
    run = narrow_runner().invoke(cli, [*args, "--workers", "2"])  # starts and stops a Ray of its own
    assert run.exit_code == 0, run.output
    # Ray's Python warnings only with -v; its temp folder removed.
    assert "WARNING" not in run.output and widest_line(run.output) <= COLUMNS, run.output
    assert set(Path(tempfile.gettempdir()).glob("edge-retina-ray-*")) == ray_folders
    table = read_results(out)
    assert table.num_rows == 7 and len(set(table.column("source").to_pylist())) == 7
    parts = sorted(p.name for p in out.iterdir())

    shutdown = connect(None, 2)  # the command's own local Ray: 2 CPUs, a 200 MiB object store
    assert shutdown is not None
    try:
        rerun = CliRunner().invoke(cli, [*args, "--workers", "1"])
        assert rerun.exit_code == 0, rerun.output
        said = unwrapped(rerun.output)
        assert unwrapped("0 screened") in said and unwrapped("7 already screened") in said
        assert sorted(p.name for p in out.iterdir()) == parts  # nothing written

        summary = CliRunner().invoke(cli, ["archive", "summary", str(out), "--json"])
        assert summary.exit_code == 0, summary.output
        (s,) = json.loads(summary.output)
        assert s["photos"] == 7 and s["errors_by_code"] == {"not_an_image": 1, "not_found": 1}
        assert s["gradable"] + s["ungradable"] == 5 and set(s["referral"]) == {
            n[len("p_"):] for n in pq.read_schema(next(out.glob("part-*"))).names if n.startswith("p_")}
        table_view = narrow_runner().invoke(cli, ["archive", "summary", str(out)])
        assert unwrapped("not_found: 1") in unwrapped(table_view.output) and widest_line(table_view.output) <= COLUMNS
    finally:
        shutdown()


def test_without_ray_the_command_names_the_extra(tiny_bundle, photos, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ModuleNotFoundError
    run = CliRunner().invoke(cli, ["archive", "screen", str(photos), "--bundle", str(tiny_bundle),
                                   "--out", str(tmp_path / "r.parquet")])
    assert run.exit_code == 2 and unwrapped("pip install 'edge-retina[archive]'") in unwrapped(run.output)


def test_an_out_that_is_a_file_is_refused_before_ray_starts(tiny_bundle, photos, tmp_path, monkeypatch):
    out = tmp_path / "out1.csv"
    out.write_text("source,status\n")
    monkeypatch.setattr("edge_retina.archive_screening.run.connect", lambda *a, **k: pytest.fail("started Ray"))
    run = CliRunner().invoke(cli, ["archive", "screen", str(photos), "--bundle", str(tiny_bundle), "--out", str(out)])
    assert run.exit_code == 2 and isinstance(run.exception, SystemExit), run.output
    assert unwrapped(f"cannot write results to {out}: it is a file") in unwrapped(run.output)
    assert out.read_text() == "source,status\n"


def test_a_resumed_run_rates_only_the_photos_it_screened():
    # 2000 photos, 1472 done by an earlier run: this one screened 528 in 22 s, i.e. 24 photos/s.
    progress = ArchiveProgress(total=2000, done_before=1472, seen=2000, screened=528, skipped=1472)
    progress.started -= 22.0
    assert progress.rate == pytest.approx(24.0, rel=0.01) and progress.eta_seconds == 0
    # Half way, with every skip still to come: 264 photos to screen at that rate.
    halfway = ArchiveProgress(total=2000, done_before=1472, seen=264, screened=264)
    halfway.started -= 11.0
    assert halfway.eta_seconds == pytest.approx(11.0, rel=0.01)


def test_summary_names_a_missing_or_bracketed_path_whole(tmp_path):
    missing = tmp_path / "nope[v2].parquet"
    run = narrow_runner().invoke(cli, ["archive", "summary", str(missing)])
    assert run.exit_code == 2 and widest_line(run.output) <= COLUMNS, run.output
    assert unwrapped(f"error: {missing}: no such file or folder") in unwrapped(run.output), run.output
    empty = tmp_path / "empty[v2]"
    empty.mkdir()
    run = narrow_runner().invoke(cli, ["archive", "summary", str(empty)])
    assert run.exit_code == 2 and unwrapped(f"{empty}: no results") in unwrapped(run.output), run.output


def test_summary_table_title_fits_80_columns(worker, photos, tmp_path):
    out = tmp_path / "results[v2].parquet"
    rows = worker(pending_work(expand_sources([str(photos)]), out, worker.provenance["bundle_sha256"]))
    named = pa.array(["student-v3-int8-site-adapted"] * rows.num_rows)  # a bundle name as long as real ones
    write_part(out, rows.set_column(rows.schema.get_field_index("bundle"), "bundle", named))
    run = narrow_runner().invoke(cli, ["archive", "summary", str(out)])
    assert run.exit_code == 0 and widest_line(run.output) <= COLUMNS, run.output
    lines = run.output.splitlines()
    assert any(f"{rows.num_rows} photos" in line for line in lines), run.output  # not folded mid-phrase
    assert any(worker.provenance["bundle_sha256"][:12] in line for line in lines), run.output


def test_one_photo_error_and_worker_are_counted_in_the_singular(worker, photos, tmp_path, monkeypatch):
    def screen_one_photo(listed, out, bundle_path, *, on_progress, **_):
        progress = ArchiveProgress(total=1, seen=1, screened=1, errors=1, workers=1)
        progress.started -= archive_cli.LOG_EVERY_SECONDS  # a progress line is due (no terminal here)
        on_progress(progress)
        return progress

    monkeypatch.setattr(archive_cli, "screen_archive", screen_one_photo)
    run = narrow_runner().invoke(cli, ["archive", "screen", str(photos / "IMG_0.jpg"), "--bundle", "unused",
                                       "--out", str(tmp_path / "results.parquet")])
    assert run.exit_code == 1, run.output  # every row an error
    said = unwrapped(run.output)
    assert unwrapped("1/1 photo, ") in said, run.output  # the progress line
    assert unwrapped("1 photo: 1 screened (1 error), 0 already screened") in said, run.output
    assert unwrapped(" on 1 worker (Ray up in") in said, run.output

    out = tmp_path / "one.parquet"
    write_part(out, worker(pending_work(expand_sources([str(photos / "IMG_0.jpg")]), out,
                                        worker.provenance["bundle_sha256"])))
    summary = narrow_runner().invoke(cli, ["archive", "summary", str(out)])
    assert summary.exit_code == 0 and "1 photo" in summary.output and "1 photos" not in summary.output, summary.output


def test_the_driver_says_when_the_workers_int8_engine_was_guarded_on_other_kernels(tiny_bundle, photos, tmp_path,
                                                                                   monkeypatch, caplog):
    """Ray passes the workers' log lines on only with --verbose: the driver warns once, before Ray starts."""
    from edge_retina.archive_screening import run

    import shutil

    # The tiny bundle's ONNX Runtime engine labelled INT8, with a guard record: only such a bundle makes
    # the driver look (what the record says is the caveat's business, stubbed here).
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["engines"]:
        if entry["backend"] == "onnxruntime":
            entry.update(precision="int8", calibration={"manifest_sha256": "0" * 64, "size": 1, "method": "test"},
                         notes={"accuracy_guard": {"measured_on": {"cpu_model": "x", "int8_kernels": "x86-vnni"}}})
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(run, "int8_guard_caveat", lambda engine, device: f"check {engine.describe()} here")

    def stop(*args, **kwargs):
        raise RuntimeError("stopped before Ray")

    monkeypatch.setattr(run, "connect", stop)
    with pytest.raises(RuntimeError, match="stopped before Ray"):
        run.screen_archive(expand_sources([str(photos)]), tmp_path / "out", bundle, backend="onnxruntime")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == ["check onnxruntime/int8/teacher here"]
