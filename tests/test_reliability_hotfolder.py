"""Hostile files in the hot folder (issue 14): nothing blocks or stops the watcher, each sidecar
speaks for its own capture, and a capture written in two goes ends with the complete file's result."""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from bridge_support import small_jpeg
from click.testing import CliRunner
from narrow_terminal import unwrapped

from edge_retina.cli.main import cli
from firmware_bridge.hotfolder import HotFolder, sidecar_path
from firmware_bridge.store import ResultStore


@pytest.fixture()
def store(tmp_path):
    store = ResultStore(tmp_path / "journal.sqlite3")
    yield store
    store.close()


def scan_within(watcher: HotFolder, seconds: float = 20.0) -> list:
    """scan_once in a thread: a hang fails the test instead of blocking the suite."""
    written: list = []
    thread = threading.Thread(target=lambda: written.extend(watcher.scan_once()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the hot folder scan hangs"
    return written


def test_fifo_and_symlink_loop_are_skipped_and_later_captures_screened(screener, store, retina_rgb, tmp_path,
                                                                        caplog):
    folder = tmp_path / "captures"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(small_jpeg(retina_rgb))
    os.mkfifo(folder / "b.jpg")
    (folder / "x.jpg").symlink_to("x.jpg")  # ln -s x.jpg x.jpg
    (folder / "c.jpg").write_bytes(small_jpeg(retina_rgb, side=150))
    watcher = HotFolder(screener, store, folder, settle_seconds=0)
    assert sorted(p.name for p in scan_within(watcher)) == ["a.jpg.result.json", "c.jpg.result.json"]
    (folder / "d.jpg").write_bytes(small_jpeg(retina_rgb, side=170))
    assert [p.name for p in scan_within(watcher)] == ["d.jpg.result.json"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("b.jpg: not a regular file" in w for w in warnings) == 1  # warned once, not every scan
    assert sum("x.jpg: cannot be read" in w for w in warnings) == 1


def test_a_link_to_a_missing_file_is_warned_about_once_and_screened_when_the_file_appears(screener, store, retina_rgb,
                                                                                        tmp_path, caplog):
    folder = tmp_path / "captures"
    folder.mkdir()
    archive = tmp_path / "archive"  # not mounted yet
    (folder / "IMG_1.jpg").symlink_to(archive / "IMG_1.jpg")
    watcher = HotFolder(screener, store, folder, settle_seconds=0)
    for _ in range(2):
        assert scan_within(watcher) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{folder / 'IMG_1.jpg'}: a link to a missing file ({archive / 'IMG_1.jpg'}); skipped"]
    archive.mkdir()
    (archive / "IMG_1.jpg").write_bytes(small_jpeg(retina_rgb))
    assert scan_within(watcher) == [sidecar_path(folder / "IMG_1.jpg")]


def test_a_sidecar_that_cannot_be_written_is_warned_about_once_and_written_when_it_can(screener, store, retina_rgb,
                                                                                     tmp_path, caplog, monkeypatch):
    folder = tmp_path / "captures"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(small_jpeg(retina_rgb))
    watcher = HotFolder(screener, store, folder, settle_seconds=0)

    def read_only(sidecar, *args):
        raise PermissionError(1, "Operation not permitted", str(sidecar.with_name(".a.jpg.result.json.x.partial")))

    monkeypatch.setattr("firmware_bridge.hotfolder.write_sidecar", read_only)
    for _ in range(3):  # a poll every second would otherwise log a line per capture every second
        assert scan_within(watcher) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{sidecar_path(folder / 'a.jpg')}: cannot be written (Operation not permitted); the "
                        "result is in the journal, tried again at each scan"]
    monkeypatch.undo()
    assert scan_within(watcher) == [sidecar_path(folder / "a.jpg")]


def test_once_exits_1_when_a_capture_is_left_without_its_sidecar(tiny_bundle, retina_rgb, tmp_path, monkeypatch):
    """A script running `hotfolder --once` learns that a result did not reach its sidecar (it is in the
    journal); the next run writes it and exits 0."""
    (tmp_path / "a.jpg").write_bytes(small_jpeg(retina_rgb))
    args = ["bridge", "hotfolder", str(tmp_path), "--bundle", str(tiny_bundle), "--once", "--settle", "0",
            "--backend", "onnxruntime"]

    def read_only(sidecar, *args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("firmware_bridge.hotfolder.write_sidecar", read_only)
    failed = CliRunner().invoke(cli, args)
    assert failed.exit_code == 1 and isinstance(failed.exception, SystemExit), failed.output
    assert unwrapped("0 sidecars written") in unwrapped(failed.output), failed.output
    assert unwrapped("error: 1 capture left without a sidecar (see the warnings); the next scan tries again") \
        in unwrapped(failed.output), failed.output
    monkeypatch.undo()
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and unwrapped("1 sidecar written") in unwrapped(again.output), again.output


def test_each_sidecar_names_its_own_capture(screener, store, retina_rgb, tmp_path):
    folder = tmp_path / "captures"
    (folder / "day2").mkdir(parents=True)
    same = small_jpeg(retina_rgb)
    (folder / "IMG_1.jpg").write_bytes(same)
    (folder / "day2" / "IMG_1_copy.jpg").write_bytes(same)  # same bytes: one journal row
    scan_within(HotFolder(screener, store, folder, settle_seconds=0))
    for capture in (folder / "IMG_1.jpg", folder / "day2" / "IMG_1_copy.jpg"):
        sidecar = json.loads(sidecar_path(capture).read_text())
        assert sidecar["meta"]["path"] == str(capture.relative_to(folder)) and sidecar["image"] == capture.name


def test_a_capture_written_in_two_goes_ends_with_the_complete_files_result(screener, store, retina_rgb, tmp_path):
    """A writer pausing longer than --settle: its partial file is screened as corrupt, then the
    complete file replaces that result (docs/PROTOCOL.md, "Hot folder")."""
    folder = tmp_path / "captures"
    folder.mkdir()
    data = small_jpeg(retina_rgb)
    capture = folder / "IMG_7.jpg"
    capture.write_bytes(data[: len(data) // 2])
    watcher = HotFolder(screener, store, folder, settle_seconds=0)
    scan_within(watcher)
    assert json.loads(sidecar_path(capture).read_text())["result"]["error_code"] == "corrupt"
    with open(capture, "ab") as rest:
        rest.write(data[len(data) // 2:])
    assert scan_within(watcher) == [sidecar_path(capture)]
    assert json.loads(sidecar_path(capture).read_text())["result"]["status"] in ("refer", "no-referral")


@pytest.mark.parametrize("arguments, why", [
    (["hotfolder", "captures", "--store", "notes.txt"], "notes.txt: file is not a database"),
    (["hotfolder", "captures", "--store", "notes.txt/journal.sqlite3"],
     "notes.txt/journal.sqlite3: notes.txt is not a folder"),
    (["results", "--store", "notes.txt"], "notes.txt: file is not a database"),
], ids=["hotfolder-not-sqlite", "hotfolder-under-a-file", "results-not-sqlite"])
def test_a_store_that_cannot_be_opened_is_one_message(tiny_bundle, tmp_path, monkeypatch, arguments, why):
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("a text file, not a result store")
    Path("captures").mkdir()
    bundle = ["--bundle", str(tiny_bundle), "--once"] if arguments[0] == "hotfolder" else []
    res = CliRunner().invoke(cli, ["bridge", *arguments, *bundle])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert unwrapped(f"error: cannot open the result store {why}") in unwrapped(res.output), res.output
    assert Path("notes.txt").read_text() == "a text file, not a result store"


@pytest.mark.parametrize("kind", ["empty-file", "another-database"])
def test_bridge_results_neither_creates_nor_changes_a_store(tmp_path, kind):
    """A reader command: an empty file (an empty SQLite database) or another program's database is
    refused as it is, not given the store's tables."""
    path = tmp_path / "store.sqlite3"
    path.touch()
    if kind == "another-database":
        with contextlib.closing(sqlite3.connect(path)) as other:
            other.execute("CREATE TABLE patients (name TEXT)")
            other.commit()
    before = path.read_bytes()
    res = CliRunner().invoke(cli, ["bridge", "results", "--store", str(path)])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit), res.output
    assert unwrapped(f"error: cannot open the result store {path}: it is not a bridge result store (it has no "
                     "requests table)") in unwrapped(res.output), res.output
    assert path.read_bytes() == before


def test_bridge_results_reads_a_store_the_bridge_has_open(store):
    """Read-only, beside the writer: what it has committed is printed."""
    store.settle("r1", "0" * 64, {"eye": "left"}, 1, {"status": "refer"})
    res = CliRunner().invoke(cli, ["bridge", "results", "--store", str(store.path)])
    assert res.exit_code == 0, res.output
    (line,) = res.output.splitlines()
    assert json.loads(line)["request_id"] == "r1" and json.loads(line)["result"] == {"status": "refer"}
