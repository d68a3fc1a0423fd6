"""Crash safety: kill -9 of the server mid-stream, hot-folder restarts, and `bridge results`."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from bridge_support import REPO, ServerProcess, connect, small_jpeg
from click.testing import CliRunner

from edge_retina.screener import Screener
from firmware_bridge.cli import MIN_FRAME_LIMIT_MB, bridge
from firmware_bridge.client import BridgeError
from firmware_bridge.hotfolder import HotFolder, sidecar_path
from firmware_bridge.protocol import MAX_METADATA, FrameParser, Message, MessageType, encode_frame, encode_payload
from firmware_bridge.server import BridgeServer
from firmware_bridge.store import ResultStore
from narrow_terminal import unwrapped


def test_kill_9_mid_stream_then_restart_loses_and_repeats_nothing(tiny_bundle, retina_rgb, tmp_path):
    """Requests whose RESULT arrived before the kill keep it (same completion time: not screened
    again); those cut off are screened once after the restart, when the camera retries them."""
    images = [small_jpeg(retina_rgb, side=96 + 4 * i) for i in range(24)]
    store = tmp_path / "r.sqlite3"
    server = ServerProcess(tiny_bundle, store, "--backend", "onnxruntime", "--threads", "1")
    before: dict[str, dict] = {}
    killed = threading.Event()

    def camera():
        try:
            with connect(server.address) as client:
                for i, image in enumerate(images):
                    before[f"k{i}"] = client.screen(f"k{i}", image)
        except (ConnectionError, OSError, BridgeError):
            assert killed.is_set()

    thread = threading.Thread(target=camera)
    thread.start()
    while len(before) < 8:
        thread.join(0.01)
    killed.set()
    server.kill()
    thread.join()
    assert 8 <= len(before) < len(images)

    server = ServerProcess(tiny_bundle, store, "--backend", "onnxruntime", "--threads", "1")
    try:
        with connect(server.address) as client:
            after = {f"k{i}": client.screen(f"k{i}", image) for i, image in enumerate(images)}
            assert client.status()["queue_depth"] == 0
    finally:
        assert server.stop() == 0
    for request_id, reply in before.items():
        assert after[request_id]["duplicate"] is True
        assert after[request_id]["completed_at"] == reply["completed_at"]
        assert after[request_id]["result"] == reply["result"]
    assert all(r["result"]["status"] != "error" for r in after.values())
    result_store = ResultStore(store)
    assert result_store.counts() == {"pending": 0, "done": len(images)}
    result_store.close()

    lines = CliRunner().invoke(bridge, ["results", "--store", str(store), "--since", "0"]).output.splitlines()
    assert sorted(json.loads(line)["request_id"] for line in lines) == sorted(after)
    last = max(r["completed_at"] for r in after.values())
    newer = CliRunner().invoke(bridge, ["results", "--store", str(store), "--since", last])
    assert newer.exit_code == 0 and newer.output == ""
    bad = CliRunner().invoke(bridge, ["results", "--store", str(store), "--since", "last tuesday"])
    assert bad.exit_code != 0 and "ISO-8601" in bad.output


def test_requests_accepted_before_a_crash_are_screened_at_start(screener, retina_rgb, tmp_path):
    """Accepted (journaled) but not screened when the process died: the next start screens them
    without waiting for the camera, and the camera's retry gets that one result."""
    jpeg = small_jpeg(retina_rgb)
    store = ResultStore(tmp_path / "r.sqlite3")
    meta = {"request_id": "orphan-1", "format": "jpeg", "eye": "left"}
    assert store.accept("orphan-1", hashlib.sha256(jpeg).hexdigest(), meta, jpeg)
    server = BridgeServer(screener, store)
    try:
        deadline = time.monotonic() + 30
        while store.counts()["pending"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        stored = store.get("orphan-1")
        assert stored.result["status"] != "error" and stored.meta == meta
        assert server.handle(Message(MessageType.SCREEN, meta, jpeg)).meta["completed_at"] == stored.record()["completed_at"]
    finally:
        server.close()
        store.close()


def test_hot_folder_screens_each_capture_once_across_restarts(screener, retina_rgb, tmp_path, monkeypatch):
    folder = tmp_path / "captures"
    (folder / "2026-11-23").mkdir(parents=True)
    first = folder / "IMG_0001.JPG"
    first.write_bytes(small_jpeg(retina_rgb))
    (folder / "2026-11-23" / "IMG_0002.jpg").write_bytes(small_jpeg(retina_rgb, side=160))
    (folder / "notes.txt").write_text("not an image")
    journal = tmp_path / "journal.sqlite3"
    calls = []
    original = screener.preprocess
    monkeypatch.setattr(screener, "preprocess", lambda *a, **k: calls.append(k.get("name")) or original(*a, **k))

    store = ResultStore(journal)
    written = HotFolder(screener, store, folder, settle_seconds=0).scan_once()
    assert sorted(p.name for p in written) == ["IMG_0001.JPG.result.json", "IMG_0002.jpg.result.json"]
    sidecar = json.loads(sidecar_path(first).read_text())
    assert sidecar["image"] == "IMG_0001.JPG" and sidecar["result"]["status"] != "error"
    assert not [p for p in folder.rglob("*") if p.name.startswith(".")]  # no temporary file left
    store.close()

    # Restart: nothing to do. Then a crash after the result was committed but before the sidecar
    # was renamed into place: the restart writes the sidecar from the journal, without screening.
    store = ResultStore(journal)
    assert HotFolder(screener, store, folder, settle_seconds=0).scan_once() == []
    sidecar_path(first).unlink()
    assert HotFolder(screener, store, folder, settle_seconds=0).scan_once() == [sidecar_path(first)]
    assert json.loads(sidecar_path(first).read_text()) == sidecar
    assert len(calls) == 2

    # A crash after journaling, before the result: screened (once) on the restart.
    third = folder / "IMG_0003.jpg"
    third.write_bytes(small_jpeg(retina_rgb, side=200))
    watcher = HotFolder(screener, store, folder, settle_seconds=0)
    monkeypatch.setattr(screener, "preprocess", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        watcher.scan_once()
    assert store.counts()["pending"] == 1 and not sidecar_path(third).exists()
    monkeypatch.setattr(screener, "preprocess", lambda *a, **k: calls.append(k.get("name")) or original(*a, **k))
    assert HotFolder(screener, store, folder, settle_seconds=0).scan_once() == [sidecar_path(third)]
    assert sorted(calls) == ["IMG_0001.JPG", "IMG_0002.jpg", "IMG_0003.jpg"]  # screened on worker threads

    # A new capture under an old name is a new image: screened again.
    first.write_bytes(small_jpeg(retina_rgb, side=100))
    assert HotFolder(screener, store, folder, settle_seconds=0).scan_once() == [sidecar_path(first)]
    assert calls[-1] == "IMG_0001.JPG"
    # A capture still being written (fresh mtime) is left for a later scan.
    (folder / "IMG_0004.jpg").write_bytes(small_jpeg(retina_rgb))
    assert HotFolder(screener, store, folder, settle_seconds=60).scan_once() == []
    assert store.counts() == {"pending": 0, "done": 4}
    store.close()


def test_a_journalled_capture_deleted_before_its_result_is_closed_with_an_error(screener, retina_rgb, tmp_path,
                                                                               monkeypatch):
    folder = tmp_path / "captures"
    folder.mkdir()
    capture = folder / "IMG_0009.jpg"
    capture.write_bytes(small_jpeg(retina_rgb))
    store = ResultStore(tmp_path / "journal.sqlite3")
    original = screener.preprocess
    monkeypatch.setattr(screener, "preprocess", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # a crash after journalling, before the result
        HotFolder(screener, store, folder, settle_seconds=0).scan_once()
    capture.unlink()  # and the file is gone before the restart
    monkeypatch.setattr(screener, "preprocess", original)
    assert HotFolder(screener, store, folder, settle_seconds=0).scan_once() == []
    assert store.counts() == {"pending": 0, "done": 1}
    (row,) = list(store.done_since(0))
    assert row.result["status"] == "error" and row.result["error_code"] == "not_found"
    assert "removed or replaced" in row.result["error"] and row.meta["path"] == "IMG_0009.jpg"
    store.close()


def test_hotfolder_command_once(tiny_bundle, retina_rgb, tmp_path):
    (tmp_path / "a.jpg").write_bytes(small_jpeg(retina_rgb))
    args = ["hotfolder", str(tmp_path), "--bundle", str(tiny_bundle), "--once", "--settle", "0",
            "--backend", "onnxruntime"]
    first = CliRunner().invoke(bridge, args)
    assert first.exit_code == 0, first.output
    assert unwrapped("1 sidecar written") in unwrapped(first.output)
    assert (tmp_path / ".edge-retina" / "journal.sqlite3").is_file()
    assert "0 sidecars written" in CliRunner().invoke(bridge, args).output


def test_bridge_logs_its_own_lines_and_libraries_only_with_v(tiny_bundle, retina_rgb, tmp_path):
    """A damaged DICOM makes pydicom log a warning the result already reports: shown with -v only,
    while the bridge's own INFO lines always show (the whole command, as a device runs it)."""
    pytest.importorskip("pydicom")
    from dicom_support import jpeg_to_dicom

    jpeg = tmp_path / "a.jpg"
    jpeg.write_bytes(small_jpeg(retina_rgb))
    whole = jpeg_to_dicom(jpeg, tmp_path / "whole.dcm").read_bytes()

    def stderr(*verbose: str) -> str:
        folder = tmp_path / f"captures{''.join(verbose)}"  # a folder of its own: a run screens each capture once
        folder.mkdir()
        (folder / "a.jpg").write_bytes(jpeg.read_bytes())
        (folder / "damaged.dcm").write_bytes(whole[: len(whole) * 2 // 3])  # ends inside the pixel data
        command = [sys.executable, "-m", "edge_retina", *verbose, "bridge", "hotfolder", str(folder), "--bundle",
                   str(tiny_bundle), "--once", "--settle", "0", "--backend", "onnxruntime"]
        run = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
        assert run.returncode == 0, run.stderr
        return run.stderr

    quiet = stderr()
    assert "edge_retina.bridge.hotfolder" in quiet and "damaged.dcm -> error" in quiet, quiet
    assert "pydicom" not in quiet, quiet
    verbose = stderr("-v")
    assert "pydicom" in verbose
    # Timestamped with -v too (-v configures logging before the bridge would).
    ours = [line for line in verbose.splitlines() if "edge_retina.bridge.hotfolder" in line]
    assert ours and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) for line in ours), verbose


def test_serve_needs_exactly_one_transport_and_loopback_by_default(tiny_bundle, tmp_path):
    runner = CliRunner()
    store = ["--store", str(tmp_path / "s.sqlite3")]
    none = runner.invoke(bridge, ["serve", "--bundle", str(tiny_bundle), *store])
    assert none.exit_code == 2 and unwrapped("exactly one") in unwrapped(none.output)
    remote = runner.invoke(bridge, ["serve", "--bundle", str(tiny_bundle), "--tcp", "0.0.0.0:0", *store])
    assert remote.exit_code == 2 and "--allow-remote" in remote.output


@pytest.mark.parametrize("args, said", [
    (["--tcp", "notaport"], "'notaport' is not [HOST:]PORT (0-65535)"),
    (["--tcp", "127.0.0.1:99999"], "'127.0.0.1:99999' is not [HOST:]PORT"),
    (["--tcp", "0", "--queue", "0"], "--queue"),
    (["--tcp", "0", "--timeout", "-1"], "--timeout"),
    (["--tcp", "0", "--frame-timeout", "0"], "--frame-timeout"),
    (["--tcp", "0", "--max-frame-mb", "0"], "--max-frame-mb"),
    (["--tcp", "0", "--max-inflight-mb", "0"], "--max-inflight-mb"),
    # Positive, but 0 bytes once in bytes (every frame refused), or no number of bytes at all.
    (["--tcp", "0", "--max-frame-mb", "1e-7"], "--max-frame-mb': 1e-07 is not in the range x>=0.1"),
    (["--tcp", "0", "--max-inflight-mb", "1e-7"], "--max-inflight-mb': 1e-07 is not in the range x>=0.1"),
    (["--tcp", "0", "--max-frame-mb", "inf"], "--max-frame-mb': inf is not a finite number of MiB"),
    (["--tcp", "0", "--max-inflight-mb", "nan"], "--max-inflight-mb': nan is not a finite number of MiB"),
    (["--tcp", "0", "--idle-timeout", "0"], "--idle-timeout"),
    (["--tcp", "0", "--max-connections", "0"], "--max-connections"),
    (["--serial", "/dev/nonexistent"], "cannot open /dev/nonexistent: No such file or directory"),
    (["--socket", "nodir/x.sock"], "nodir/x.sock: no such folder nodir"),
])
def test_serve_refuses_bad_options_before_loading_the_engine(args, said, tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Screener, "from_bundle", lambda *a, **k: pytest.fail("the engine was loaded"))
    refused = CliRunner().invoke(bridge, ["serve", "--bundle", str(tiny_bundle), "--store", "s.sqlite3", *args])
    assert refused.exit_code == 2 and isinstance(refused.exception, SystemExit), refused.output
    assert unwrapped(said) in unwrapped(refused.output), refused.output


def test_the_smallest_frame_limit_takes_the_most_metadata_and_the_smallest_photo():
    from edge_retina.preprocess.decode import MIN_SIDE

    padding = "x" * (MAX_METADATA - len('{"pad":""}'))
    photo = bytes(MIN_SIDE * MIN_SIDE * 3)  # rgb8, the widest pixel format
    payload = encode_payload({"pad": padding}, photo)
    assert len(payload) == 4 + MAX_METADATA + len(photo)
    parser = FrameParser(max_payload=int(MIN_FRAME_LIMIT_MB * 2**20))
    parser.feed(encode_frame(MessageType.SCREEN, payload))
    assert parser.next().body == photo


@pytest.mark.parametrize("args", [["--interval", "0"], ["--settle", "-1"], ["--threads", "0"]])
def test_hotfolder_refuses_out_of_range_options(args, tiny_bundle, tmp_path):
    refused = CliRunner().invoke(bridge, ["hotfolder", str(tmp_path), "--bundle", str(tiny_bundle), *args])
    assert refused.exit_code == 2 and args[0] in refused.output, refused.output


def test_a_tcp_port_in_use_is_named(tiny_bundle, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        refused = CliRunner().invoke(bridge, ["serve", "--bundle", str(tiny_bundle), "--store", str(tmp_path / "s"),
                                              "--tcp", str(port), "--backend", "onnxruntime"])
    assert refused.exit_code == 1 and refused.output.startswith("error: "), refused.output
    assert unwrapped(f"cannot listen on tcp:127.0.0.1:{port}: Address already in use") in unwrapped(refused.output)


def test_a_serial_port_that_disappears_is_waited_for_with_one_warning_per_outage(monkeypatch, caplog):
    from firmware_bridge import transports

    class Port:
        device, baudrate, name = "/dev/ttyACM0", 115200, "serial:/dev/ttyACM0"

    gone = OSError("cannot open /dev/ttyACM0: No such file or directory")
    opens = iter([gone, gone, Port(), gone, Port()])

    def open_port(device, baudrate):
        outcome = next(opens)
        if isinstance(outcome, OSError):
            raise outcome
        return outcome

    monkeypatch.setattr(transports, "SerialStream", open_port)
    monkeypatch.setattr(transports.time, "sleep", lambda _: None)
    streams = transports.serial_streams(Port(), lambda: False)
    with caplog.at_level("INFO", logger="edge_retina.bridge"):
        for _ in range(3):  # the port opened at start, then after each of two outages
            assert next(streams).device == "/dev/ttyACM0"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{gone}; opening it again until it is back"] * 2
