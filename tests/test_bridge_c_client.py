"""The reference C client, built with gcc, screens images through the Python server."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from bridge_support import REPO, running_server, small_jpeg

from firmware_bridge.client import BridgeClient
from firmware_bridge.protocol import FrameParser, Message, MessageType, encode_message

C_CLIENT = REPO / "firmware_bridge" / "c_client"


@pytest.fixture(scope="module")
def example(tmp_path_factory) -> Path:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("gcc and make are needed to build the C client")
    out = tmp_path_factory.mktemp("c-client")
    subprocess.run(["make", "-C", str(C_CLIENT), "CC=gcc", f"OUT={out}"], check=True, capture_output=True)
    return out / "er_screen_example"


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_c_example_screens_an_image(example, screener, retina_rgb, tmp_path, transport):
    image = tmp_path / "capture.jpg"
    image.write_bytes(small_jpeg(retina_rgb))
    with running_server(screener, tmp_path / "r.sqlite3", transport=transport) as (server, address):
        kind, _, where = address.partition(":")
        run = subprocess.run([example, f"--{kind}", where, image, "cam-c:1", "right"],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        hello, result = (json.loads(line) for line in run.stdout.splitlines())
        assert hello["version"] == 1 and hello["bundle_id"] == server.bundle_id
        assert result["request_id"] == "cam-c:1" and result["meta"]["eye"] == "right"
        assert result["result"] == screener.screen(image.read_bytes(), name="cam-c:1").to_dict() | {
            "timings_ms": result["result"]["timings_ms"], "bundle_id": server.bundle_id}
        assert run.stderr.strip() == f"cam-c:1: {result['result']['status']}"

        again = subprocess.run([example, f"--{kind}", where, image, "cam-c:1"], capture_output=True, text=True)
        assert again.returncode == 0 and json.loads(again.stdout.splitlines()[1])["duplicate"] is True

        refused = subprocess.run([example, f"--{kind}", where, image, "bad id"], capture_output=True, text=True)
        assert refused.returncode == 2 and "bad_request" in refused.stderr
        with (BridgeClient.tcp(where) if kind == "tcp" else BridgeClient.unix(where)) as client:
            assert client.status()["processed"] == 1


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_c_example_screens_a_raw_rgb_frame(example, screener, retina_rgb, tmp_path, monkeypatch, transport):
    """On a Unix socket the frame goes as a sealed memfd (protocol 1.2), over TCP in the SCREEN."""
    from edge_retina.preprocess.raw import RawFrame
    from firmware_bridge import server as server_module

    mapped = []
    map_sealed_frame = server_module.map_sealed_frame
    monkeypatch.setattr(server_module, "map_sealed_frame",
                        lambda fd, max_size: mapped.append(fd) or map_sealed_frame(fd, max_size))
    frame = np.ascontiguousarray(retina_rgb[100:580, 100:740])  # 640x480 RGB8, rows without padding
    path = tmp_path / "capture.rgb"
    path.write_bytes(frame.tobytes())
    with running_server(screener, tmp_path / "r.sqlite3", transport=transport) as (server, address):
        kind, _, where = address.partition(":")
        run = subprocess.run([example, f"--{kind}", where, "--raw", "640x480", path, "cam-c:raw", "left"],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        hello, result = (json.loads(line) for line in run.stdout.splitlines())
        assert ("fd" in hello["body_transports"]) is (transport == "unix") is (len(mapped) == 1)
        assert result["meta"] == {"request_id": "cam-c:raw", "format": "raw", "eye": "left", "pixel_format": "rgb8",
                                  "width": 640, "height": 480, "stride": 1920}
        direct = screener.screen(RawFrame(frame.tobytes(), "rgb8", 640, 480), name="cam-c:raw").to_dict()
        assert result["result"] == direct | {"timings_ms": result["result"]["timings_ms"], "bundle_id": server.bundle_id}

        wrong_size = subprocess.run([example, f"--{kind}", where, "--raw", "640x479", path, "cam-c:raw2"],
                                    capture_output=True, text=True)
        assert wrong_size.returncode == 64 and "640x479 RGB8 frame is 919680 bytes" in wrong_size.stderr


def test_c_example_falls_back_to_an_inline_frame_without_a_memfd(example, screener, retina_rgb, tmp_path,
                                                                  monkeypatch):
    """memfd_create failing (here EMFILE: a limit of 4 descriptors, the socket taking the last) is one line
    on stderr, and the frame goes in the SCREEN instead."""
    from firmware_bridge import server as server_module

    mapped = []
    map_sealed_frame = server_module.map_sealed_frame
    monkeypatch.setattr(server_module, "map_sealed_frame",
                        lambda fd, max_size: mapped.append(fd) or map_sealed_frame(fd, max_size))
    path = tmp_path / "capture.rgb"
    path.write_bytes(np.ascontiguousarray(retina_rgb[100:580, 100:740]).tobytes())
    with running_server(screener, tmp_path / "r.sqlite3") as (_, address):
        run = subprocess.run(["sh", "-c", 'ulimit -n 4 && exec "$@"', "sh", example, "--unix",
                              address.partition(":")[2], "--raw", "640x480", path, "cam-c:inline"],
                             capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines()[0] == "cannot put the frame in a memfd (Too many open files): sending it inline"
    hello, result = (json.loads(line) for line in run.stdout.splitlines())
    assert "fd" in hello["body_transports"] and mapped == [] and result["result"]["status"] != "error"


@pytest.mark.parametrize("transports", [["inline"], ["inline", "fd"]])
def test_c_example_fails_cleanly_when_the_server_stops_reading(example, tmp_path, transports):
    """A server gone between two requests is an I/O error the firmware handles (EPIPE), not SIGPIPE
    killing it: on the plain writes and on the sendmsg passing a memfd."""
    path = tmp_path / "capture.rgb"
    path.write_bytes(bytes(640 * 480 * 3))
    socket_dir = Path(tempfile.mkdtemp(prefix="erc-"))  # a socket path under 107 bytes
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_dir / "s.sock"))
    listener.listen(1)

    def answer_hello_then_stop_reading() -> None:
        conn, _ = listener.accept()
        with conn:
            parser = FrameParser()
            while parser.next() is None:
                parser.feed(conn.recv(65536))
            conn.shutdown(socket.SHUT_RD)  # the client's next write fails with EPIPE
            conn.sendall(encode_message(Message(MessageType.HELLO, {"version": 1, "minor_version": 2,
                                                                    "body_transports": transports})))

    server = threading.Thread(target=answer_hello_then_stop_reading, daemon=True)
    server.start()
    try:
        run = subprocess.run([example, "--unix", socket_dir / "s.sock", "--raw", "640x480", path, "cam-c:1"],
                             capture_output=True, text=True, timeout=60)
    finally:
        server.join(timeout=10)
        listener.close()
        shutil.rmtree(socket_dir)
    assert run.returncode == 1, (run.returncode, run.stderr)
    assert run.stderr.strip() == "SCREEN failed: Broken pipe"
