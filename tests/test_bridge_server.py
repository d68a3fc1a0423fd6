"""The bridge server in this process: every message over a Unix socket, TCP and a serial line (pty),
malformed frames, backpressure, timeouts, idempotency, a scaled-down load test."""
from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
from bridge_support import connect, running_server, small_jpeg

from edge_retina.screener import Screener
from firmware_bridge.client import BridgeError
from firmware_bridge.protocol import (
    FrameParser,
    Message,
    MessageType,
    encode_frame,
    encode_message,
    encode_payload,
)
from firmware_bridge.server import BridgeServer
from firmware_bridge.store import ResultStore


@pytest.fixture(scope="module")
def jpeg(retina_rgb):
    return small_jpeg(retina_rgb)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_every_message_round_trips(transport, screener, jpeg, retina_rgb, tmp_path):
    with running_server(screener, tmp_path / "r.sqlite3", transport=transport) as (server, address), \
            connect(address) as client:
        hello = client.hello(versions=(7, 1))
        assert hello["version"] == 1 and hello["bundle_id"] == server.bundle_id
        status = client.status()
        assert status["health"] == "ok" and status["queue_depth"] == 0 and status["bundle_id"] == server.bundle_id
        assert client.selftest()["passed"] is True

        reply = client.screen("cam-1:0001", jpeg, eye="left", patient="P-77", captured_at="2026-11-23T09:15:00+01:00")
        direct = screener.screen(jpeg).to_dict()
        assert reply["request_id"] == "cam-1:0001" and reply["duplicate"] is False
        assert reply["meta"]["eye"] == "left" and reply["meta"]["patient"] == "P-77"
        assert reply["result"]["status"] == direct["status"] != "error"
        assert reply["result"]["probabilities"] == pytest.approx(direct["probabilities"], abs=1e-5)

        raw = np.ascontiguousarray(retina_rgb[::11, ::11])
        raw_reply = client.screen("cam-1:0002", raw.tobytes(), image_format="raw", shape=list(raw.shape))
        assert raw_reply["result"]["status"] == screener.screen(raw).status

        with pytest.raises(BridgeError) as refused:
            client.hello(versions=(9,))
        assert refused.value.code == "unsupported_version"
        assert client.status()["processed"] == 2


def test_selftest_uses_the_bundles_golden_image_when_it_has_one(screener, tmp_path):
    from edge_retina.bundle.writer import write_bundle
    from edge_retina.selftest import bundle_selftest

    bundle = screener.bundle
    assert "selftest/expected.json" in bundle.manifest.files  # the builder puts one in every bundle
    outcome = bundle_selftest(screener)
    assert outcome["check"] == "golden-image" and outcome["passed"] is True and outcome["cosine"] > 0.9999
    files = {rel: bundle.path_of(rel) for rel in bundle.manifest.files if not rel.startswith("selftest/")}
    with Screener.from_bundle(write_bundle(tmp_path / "no-golden", bundle.manifest, files),
                              backend="onnxruntime", threads=1) as plain:
        assert bundle_selftest(plain)["check"] == "synthetic-image"


def test_invalid_requests_get_typed_errors(screener, jpeg, tmp_path):
    with running_server(screener, tmp_path / "r.sqlite3") as (_, address), connect(address) as client:
        for meta, body, code in [
            ({"format": "jpeg"}, jpeg, "bad_request"),  # no request id
            ({"request_id": "a b", "format": "jpeg"}, jpeg, "bad_request"),
            ({"request_id": "x1", "format": "gif"}, jpeg, "bad_request"),
            ({"request_id": "x1", "format": "raw", "shape": [10, 10, 3]}, b"\0" * 7, "bad_request"),
            ({"request_id": "x1", "format": "jpeg", "eye": "middle"}, jpeg, "bad_request"),
            ({"request_id": "x1", "format": "jpeg", "captured_at": "yesterday"}, jpeg, "bad_request"),
        ]:
            reply = client.request(Message(MessageType.SCREEN, meta, body))
            assert reply.type is MessageType.ERROR and reply.meta["code"] == code, meta
        assert client.request(Message(MessageType.RESULT, {})).meta["code"] == "bad_request"
        # A bad image is a result (status "error", stable code), stored like any other.
        broken = client.screen("x2", jpeg[: len(jpeg) // 2])
        assert broken["result"]["status"] == "error" and broken["result"]["error_code"] == "corrupt"


def raw_exchange(sock: socket.socket, data: bytes, replies: int) -> list[Message]:
    sock.sendall(data)
    parser, got = FrameParser(), []
    while len(got) < replies:
        chunk = sock.recv(65536)
        assert chunk, "server closed the connection"
        parser.feed(chunk)
        while (message := parser.next()) is not None:
            got.append(message)
    return got


def test_malformed_frames_get_errors_and_the_server_lives_on(screener, tmp_path):
    status = encode_message(Message(MessageType.STATUS))
    screen = encode_message(Message(MessageType.SCREEN, {"request_id": "m1", "format": "jpeg"}, b"\xff\xd8" * 50))
    flipped_payload = screen[:20] + bytes([screen[20] ^ 1]) + screen[21:]
    flipped_length = screen[:6] + bytes([screen[6] ^ 0x10]) + screen[7:]
    cases = {
        "bad_checksum": flipped_payload,
        "bad_header_checksum": flipped_length,
        "unsupported_version": encode_frame(MessageType.STATUS, encode_payload({}), version=9),
        "unknown_type": encode_frame(0x42, encode_payload({})),
        "malformed": encode_frame(MessageType.HELLO, b"\0\0\0\x05{{{{{"),
        "bad_magic": b"\x00garbage\xff" * 3,
        "frame_too_large": encode_frame(MessageType.SCREEN, b"\0" * 3000),
    }
    with running_server(screener, tmp_path / "r.sqlite3", max_payload=2048, frame_timeout=0.5) as (server, address):
        path = address.partition(":")[2]
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)
            sock.settimeout(10)
            for code, bad in cases.items():
                replies = raw_exchange(sock, bad + status, 2)
                assert replies[0].type is MessageType.ERROR and replies[0].meta["code"] == code
                assert replies[-1].type is MessageType.STATUS  # same connection, still served
            # Truncated: half a frame, then silence longer than the frame timeout.
            replies = raw_exchange(sock, screen[: len(screen) // 2], 1)
            assert replies[0].meta["code"] == "truncated"
            assert raw_exchange(sock, status, 1)[0].type is MessageType.STATUS
        with connect(address) as client:  # and new connections too
            assert client.status()["health"] == "ok"


def test_retried_request_is_never_screened_twice(screener, jpeg, tmp_path, monkeypatch):
    calls = []
    original = screener.preprocess
    monkeypatch.setattr(screener, "preprocess", lambda *a, **k: calls.append(1) or original(*a, **k))
    with running_server(screener, tmp_path / "r.sqlite3") as (_, address):
        with connect(address) as first:
            result = first.screen("again-1", jpeg)
        with connect(address) as reconnected:
            retried = reconnected.screen("again-1", jpeg)
            with pytest.raises(BridgeError) as conflict:
                reconnected.screen("again-1", jpeg + b"\0")
    assert len(calls) == 1
    assert retried["duplicate"] is True and retried["result"] == result["result"]
    assert retried["completed_at"] == result["completed_at"]
    assert conflict.value.code == "id_conflict"


class GatedScreener:
    """Blocks every preparation until released: makes queue states deterministic."""

    def __init__(self, screener):
        self._screener = screener
        self.gate = threading.Event()

    def __getattr__(self, name):
        return getattr(self._screener, name)

    def preprocess(self, *args, **kwargs):
        assert self.gate.wait(30)
        return self._screener.preprocess(*args, **kwargs)


def test_full_queue_answers_busy_and_slow_requests_time_out(screener, jpeg, tmp_path):
    gated = GatedScreener(screener)
    config = {"queue_capacity": 1, "request_timeout": 0.5, "workers": 1}
    with running_server(gated, tmp_path / "r.sqlite3", **config) as (server, address):
        screening = server._pipeline.queue_limit  # taken by the pipeline before any waits in the queue
        clients = [connect(address) for _ in range(screening + 2)]
        replies: dict[int, Message] = {}

        def send(i):
            replies[i] = clients[i].request(Message(MessageType.SCREEN, {"request_id": f"q{i}", "format": "jpeg"}, jpeg))

        senders = [threading.Thread(target=send, args=(i,)) for i in range(screening + 1)]
        deadline = time.monotonic() + 10
        for i, sender in enumerate(senders):
            sender.start()
            # Until the pipeline has taken it off the queue (capacity 1): sent earlier, the next request
            # would find the queue full and be refused (seen on a loaded machine).
            while (status := server.status())["in_flight"] <= i or (i < screening and status["queue_depth"]):
                assert time.monotonic() < deadline
                time.sleep(0.01)
        while server.status()["queue_depth"] < 1:  # the last one waits: the pipeline is full
            assert time.monotonic() < deadline
            time.sleep(0.01)
        send(screening + 1)  # the queue (capacity 1) is full
        assert replies[screening + 1].meta["code"] == "busy" and replies[screening + 1].meta["retry_after_ms"] > 0
        for sender in senders:
            sender.join()
        assert {replies[i].meta["code"] for i in range(screening + 1)} == {"timeout"}
        # A timed-out request is journalled: it stays queued even across a crash.
        assert server.store.counts()["pending"] == screening + 1
        gated.gate.set()
        # Timed out is not lost: the retry gets the result of the one screening (retried again while
        # it still takes longer than the 0.5 s timeout, as a camera does).
        for i in range(screening + 1):
            for _ in range(100):
                try:
                    assert clients[i].screen(f"q{i}", jpeg)["result"]["status"] != "error"
                    break
                except BridgeError as exc:
                    assert exc.code == "timeout"
            else:
                raise AssertionError(f"q{i} was never screened")
        for client in clients:
            client.close()


@pytest.mark.parametrize("journal_after", [30.0, 0.0])
def test_an_image_is_journalled_only_when_its_screening_waits(screener, jpeg, tmp_path, monkeypatch, journal_after):
    """Screened within journal_after: its result is committed and its image never written. Waiting
    longer: journalled (pending, with the image) while it waits, then completed."""
    gated = GatedScreener(screener)
    with running_server(gated, tmp_path / "r.sqlite3", journal_after=journal_after) as (server, address):
        journalled = []
        accept = server.store.accept
        monkeypatch.setattr(server.store, "accept", lambda *a, **k: journalled.append(a[0]) or accept(*a, **k))
        replies = []
        sender = threading.Thread(target=lambda: replies.append(connect(address).screen("j1", jpeg)))
        if journal_after:
            gated.gate.set()
        sender.start()
        deadline = time.monotonic() + 10
        while not journal_after and server.store.counts()["pending"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        gated.gate.set()
        sender.join()
        assert replies[0]["result"]["status"] != "error"
        assert journalled == ([] if journal_after else ["j1"])
        assert server.store.counts() == {"pending": 0, "done": 1}
        # A journal write that loses the race with the result never makes it pending again.
        assert not accept("j1", replies[0]["image_sha256"], {}, jpeg)
        assert server.store.get("j1").state == "done"


def test_load_eight_clients_with_bounded_queue_and_memory(screener, jpeg, tmp_path):
    clients, per_client, capacity = 8, 30, 3
    process = psutil.Process()
    rss_before = process.memory_info().rss
    with running_server(screener, tmp_path / "r.sqlite3", queue_capacity=capacity, busy_retry_ms=5) as (server, address):
        depths, failures = [], []
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                depths.append(server.status()["queue_depth"])
                time.sleep(0.005)

        def camera(c):
            try:
                with connect(address) as client:
                    for i in range(per_client):
                        reply = client.screen(f"load-{c}-{i}", jpeg, busy_retries=10_000)
                        assert reply["request_id"] == f"load-{c}-{i}" and reply["result"]["status"] != "error"
            except Exception as exc:  # reported below, with the thread's failure
                failures.append(exc)

        watcher = threading.Thread(target=watch)
        watcher.start()
        threads = [threading.Thread(target=camera, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        watcher.join()
        assert not failures
        assert server.processed == clients * per_client
        assert max(depths) <= capacity
    store = ResultStore(tmp_path / "r.sqlite3")
    assert store.counts() == {"pending": 0, "done": clients * per_client}
    store.close()
    assert process.memory_info().rss - rss_before < 150 * 2**20


def test_serial_line_over_a_pty(screener, jpeg, tmp_path):
    pytest.importorskip("serial")
    from firmware_bridge.transports import SerialStream

    master, slave = os.openpty()
    server = BridgeServer(screener, ResultStore(tmp_path / "r.sqlite3"))
    stream = SerialStream(os.ttyname(slave))
    thread = threading.Thread(target=server.serve_stream, args=(stream,), daemon=True)
    thread.start()
    parser = FrameParser()

    def exchange(message: Message | bytes) -> Message:
        os.write(master, message if isinstance(message, bytes) else encode_message(message))
        deadline = time.monotonic() + 20
        while (reply := parser.next()) is None:
            assert time.monotonic() < deadline
            if select.select([master], [], [], 0.5)[0]:
                parser.feed(os.read(master, 65536))
        return reply

    try:
        assert exchange(Message(MessageType.HELLO, {"versions": [1]})).meta["version"] == 1
        assert exchange(b"\r\nnoise on the line\r\n").meta["code"] == "bad_magic"
        while (late := exchange(Message(MessageType.STATUS))).type is MessageType.ERROR:
            pass  # one ERROR per run of noise bytes between magics
        assert late.meta["health"] == "ok"
        assert exchange(Message(MessageType.SELFTEST)).meta["passed"] is True
        reply = exchange(Message(MessageType.SCREEN, {"request_id": "uart-1", "format": "jpeg"}, jpeg))
        assert reply.type is MessageType.RESULT and reply.meta["result"]["status"] != "error"
    finally:
        server.close()
        thread.join(timeout=5)
        os.close(master)
        os.close(slave)


def test_bridge_is_device_code_without_host_imports():
    code = ("import sys, firmware_bridge.cli, firmware_bridge.server, firmware_bridge.hotfolder, firmware_bridge.client;"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'onnx', 'converters', 'openvino'}))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_a_request_parsed_after_stop_is_refused_busy_not_left_unscreened(screener, jpeg, tmp_path):
    from firmware_bridge.protocol import ProtocolError

    with running_server(screener, tmp_path / "r.sqlite3") as (server, _):
        server.stop()  # a frame already read from a connection still reaches the handler
        with pytest.raises(ProtocolError) as refused:
            server._screen(Message(MessageType.SCREEN, {"request_id": "late-1", "format": "jpeg"}, jpeg))
        assert refused.value.code == "busy"
        assert server.store.get("late-1") is None and server.status()["in_flight"] == 0
