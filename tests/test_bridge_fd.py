"""Protocol 1.2: a raw frame passed as a sealed memfd with the SCREEN over a Unix socket. It screens
like the same frame sent in the SCREEN's body; every mismatch between the descriptors and what the
frame declares is one bad_request; no descriptor is ever kept; TCP never offers it; a 1.1 client
sees nothing new."""
from __future__ import annotations

import array
import fcntl
import hashlib
import os
import socket
import threading
import time

import numpy as np
import pytest
from bridge_support import camera_frame, connect, running_server, small_jpeg

from firmware_bridge import server as server_module
from firmware_bridge.client import BridgeClient, BridgeError, sealed_memfd
from firmware_bridge.protocol import HEADER_SIZE, FrameParser, Message, MessageType, encode_message
from firmware_bridge.screen_request import request_id_of
from firmware_bridge.server import BridgeConfig, BridgeServer
from firmware_bridge.store import ResultStore
from firmware_bridge.transports import MAX_HELD_FDS, UnixSocketStream

WIDTH, HEIGHT = 640, 480
LAYOUT = {"format": "raw", "pixel_format": "rgb8", "width": WIDTH, "height": HEIGHT}


@pytest.fixture(scope="module")
def photo(retina_rgb) -> np.ndarray:
    return camera_frame(retina_rgb)


@pytest.fixture
def mapped(monkeypatch) -> list[int]:
    """The sizes of the frames the server mapped from a descriptor (which route a request took)."""
    sizes: list[int] = []
    original = server_module.map_sealed_frame

    def spy(fd: int, max_size: int) -> memoryview:
        view = original(fd, max_size)
        sizes.append(len(view))
        return view

    monkeypatch.setattr(server_module, "map_sealed_frame", spy)
    return sizes


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settles_to(count: int, timeout: float = 10.0) -> bool:
    """The process's open descriptors come back to ``count`` (a screened frame's mapping goes once its
    request is done with, a moment after its RESULT)."""
    deadline = time.monotonic() + timeout
    while open_fds() > count and time.monotonic() < deadline:
        time.sleep(0.02)
    return open_fds() <= count


def memfd_of(data: bytes, seals: int | None = None) -> int:
    """A memfd holding ``data`` with ``seals`` (None: every seal the server requires, as the client
    seals it)."""
    if seals is None:
        return sealed_memfd(data)
    fd = os.memfd_create("test-frame", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def test_a_frame_by_fd_screens_like_the_same_frame_inline(screener, photo, tmp_path, mapped, monkeypatch):
    frame = photo.tobytes()
    # Finding a request id validates the whole metadata: a request answered validates it once (validate_screen).
    looked_up = []
    monkeypatch.setattr(server_module, "request_id_of", lambda meta: looked_up.append(meta) or request_id_of(meta))
    other = np.ascontiguousarray(photo[::-1]).tobytes()
    with running_server(screener, tmp_path / "r.sqlite3") as (server, address), connect(address) as client:
        # Without HELLO the client sends the body inline, as a 1.1 client does.
        inline = client.screen_raw("cam:inline", frame, width=WIDTH, height=HEIGHT, eye="left")
        assert mapped == [] and not client.offers_fd_bodies
        hello = client.hello()
        assert hello["minor_version"] == 2 and hello["body_transports"] == ["inline", "fd"] and client.offers_fd_bodies
        by_fd = client.screen_raw("cam:fd", frame, width=WIDTH, height=HEIGHT, eye="left")
        assert mapped == [len(frame)]
        assert by_fd["result"]["status"] == inline["result"]["status"] != "error"
        assert by_fd["result"]["probabilities"] == inline["result"]["probabilities"]
        assert by_fd["meta"] == {**inline["meta"], "request_id": "cam:fd"}  # how the frame came is not recorded
        assert by_fd["image_sha256"] == inline["image_sha256"] == hashlib.sha256(frame).hexdigest()

        # Padded rows (a DMA buffer's stride) and another pixel format, by fd and inline alike.
        stride = WIDTH * 3 + 64
        bgr = np.full((HEIGHT, stride), 0xAA, np.uint8)
        bgr[:, : WIDTH * 3] = photo[:, :, ::-1].reshape(HEIGHT, -1)
        padded = {"width": WIDTH, "height": HEIGHT, "pixel_format": "bgr8", "stride": stride}
        bgr_fd = client.screen_raw("cam:bgr-fd", bgr.tobytes(), **padded)
        bgr_inline = client.screen_raw("cam:bgr-inline", bgr.tobytes(), by_fd=False, **padded)
        assert bgr_fd["result"]["probabilities"] == bgr_inline["result"]["probabilities"]
        assert len(mapped) == 2

        # Idempotency compares the image, whichever way it came.
        assert client.screen_raw("cam:fd", frame, width=WIDTH, height=HEIGHT)["duplicate"] is True
        assert client.screen_raw("cam:fd", frame, width=WIDTH, height=HEIGHT, by_fd=False)["duplicate"] is True
        assert client.screen_raw("cam:inline", frame, width=WIDTH, height=HEIGHT)["duplicate"] is True
        with pytest.raises(BridgeError) as conflict:
            client.screen_raw("cam:fd", other, width=WIDTH, height=HEIGHT)
        assert conflict.value.code == "id_conflict"
        assert client.status()["processed"] == 4
    assert looked_up == []


def test_refusals_are_one_bad_request_each_and_keep_no_descriptor(screener, photo, tmp_path, mapped):
    frame = photo.tobytes()
    all_seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
    on_disk = tmp_path / "frame.rgb"
    on_disk.write_bytes(frame)
    by_fd = {"request_id": "cam:1", **LAYOUT, "body": "fd"}
    with running_server(screener, tmp_path / "r.sqlite3", max_payload=2_000_000) as (server, address), \
            connect(address) as client:
        client.screen_raw("warm-up", frame, width=WIDTH, height=HEIGHT, by_fd=False)
        before = open_fds()
        pipe_read, pipe_write = os.pipe()
        disk_fd = os.open(on_disk, os.O_RDONLY)
        good = [memfd_of(frame) for _ in range(5)]
        # The same sealed memfd opened again write-only: seals and size pass, a read-only mapping cannot be made.
        write_only = os.open(f"/proc/self/fd/{good[4]}", os.O_WRONLY)
        cases = [  # (metadata, body, descriptors, code, what the message says)
            (by_fd, b"", [], "bad_request", "none came with it"),
            (by_fd, b"", good[:2], "bad_request", "2 came with it"),
            ({"versions": [1]}, b"", good[:1], "bad_request", "1 file descriptor came with a HELLO message"),
            ({"request_id": "cam:1", **LAYOUT}, frame, good[:1], "bad_request",
             "1 file descriptor came with a SCREEN message"),
            (by_fd, b"", [pipe_read], "bad_request", "not a memfd"),
            (by_fd, b"", [disk_fd], "bad_request", "not a memfd"),
            (by_fd, b"", [memfd_of(frame, 0)], "bad_request",
             "not sealed with F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW"),
            (by_fd, b"", [memfd_of(frame, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)], "bad_request",
             "not sealed with F_SEAL_WRITE ("),
            (by_fd, b"", [memfd_of(frame[:-WIDTH * 3], all_seals)], "bad_request",
             f"is {len(frame)} bytes, got {len(frame) - WIDTH * 3}"),
            (by_fd, b"", [memfd_of(b"", all_seals)], "bad_request", "empty"),
            ({**by_fd, "width": 1280, "height": 960}, b"", [memfd_of(bytes(1280 * 960 * 3), all_seals)],
             "frame_too_large", "over the limit of 2000000"),
            (by_fd, frame, good[2:3], "bad_request", "not in its frame"),
            ({**by_fd, "format": "jpeg"}, b"", good[3:4], "bad_request", "body fd carries a raw frame"),
            ({**by_fd, "body": "shm"}, b"", [], "bad_request", "body must be inline (the image"),
            (by_fd, b"", [write_only], "bad_request", "cannot be mapped read-only (Permission denied)"),
        ]
        try:
            for meta, body, fds, code, says in cases:
                kind = MessageType.SCREEN if "request_id" in meta else MessageType.HELLO
                reply = client.request(Message(kind, meta, body), tuple(fds))
                assert reply.type is MessageType.ERROR and reply.meta["code"] == code, (says, reply.meta)
                assert says in reply.meta["message"], reply.meta
                assert reply.meta.get("request_id") == meta.get("request_id"), reply.meta
        finally:
            for fd in {fd for _, _, fds, _, _ in cases for fd in fds} | {pipe_write, good[4]}:
                os.close(fd)
        # Only the memfd of the wrong size was mapped: what the metadata alone refuses is refused before.
        assert mapped == [len(frame) - WIDTH * 3]
        assert settles_to(before)
        # The connection goes on: a good frame by fd is screened, and its descriptor is not kept either.
        assert client.screen_raw("cam:1", frame, width=WIDTH, height=HEIGHT, by_fd=True)["result"]["status"] != "error"
        assert mapped[-1] == len(frame) and settles_to(before)


def test_tcp_never_offers_descriptors(screener, photo, tmp_path):
    with running_server(screener, tmp_path / "r.sqlite3", transport="tcp") as (_, address), connect(address) as client:
        hello = client.hello()
        assert hello["minor_version"] == 2 and hello["body_transports"] == ["inline"] and not client.offers_fd_bodies
        reply = client.request(Message(MessageType.SCREEN, {"request_id": "cam:1", **LAYOUT, "body": "fd"}))
        assert reply.meta["code"] == "bad_request" and "passes no file descriptors" in reply.meta["message"]
        assert client.screen_raw("cam:1", photo.tobytes(), width=WIDTH, height=HEIGHT)["result"]["status"] != "error"


def test_a_system_without_memfd_offers_no_descriptors(screener, photo, tmp_path, monkeypatch):
    """Where memfd does not exist (not Linux), a Unix socket carries bytes only, like TCP."""
    from firmware_bridge import transports

    monkeypatch.setattr(transports, "FRAMES_BY_FD", False)
    with running_server(screener, tmp_path / "r.sqlite3") as (_, address), connect(address) as client:
        assert client.hello()["body_transports"] == ["inline"]
        reply = client.request(Message(MessageType.SCREEN, {"request_id": "cam:1", **LAYOUT, "body": "fd"}))
        assert reply.meta["code"] == "bad_request" and "passes no file descriptors" in reply.meta["message"]


def test_a_version_1_1_client_sees_nothing_new(screener, photo, retina_rgb, tmp_path):
    """What a 1.1 client sends (no body field) is answered as before, on a Unix socket too."""
    with running_server(screener, tmp_path / "r.sqlite3") as (_, address), connect(address) as client:
        hello = client.call(Message(MessageType.HELLO, {"versions": [1], "client": "camera-1.1"}))
        assert hello["version"] == 1 and hello["minor_version"] >= 1 and "rgb8" in hello["pixel_formats"]
        reply = client.call(Message(MessageType.SCREEN, {"request_id": "cam:1", **LAYOUT}, photo.tobytes()))
        assert reply["meta"] == {"request_id": "cam:1", "eye": "unknown", **LAYOUT, "stride": WIDTH * 3}
        assert client.screen("cam:2", small_jpeg(retina_rgb))["result"]["status"] != "error"


def test_pipelined_frames_get_the_descriptors_that_came_with_them(photo):
    """Two frames already queued are read at once, the descriptor with the second's bytes: it is the
    second's, not the first's (a read ends with the bytes a descriptor came with)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    stream = UnixSocketStream(theirs, "test")
    memfd = sealed_memfd(photo.tobytes())
    try:
        sender = BridgeClient(ours)
        sender.send(Message(MessageType.STATUS))
        sender.send(Message(MessageType.SCREEN, {"request_id": "cam:1", **LAYOUT, "body": "fd"}), (memfd,))
        parser = FrameParser()
        parser.feed(stream.read())
        taken = []
        while True:
            start = parser.consumed
            message = parser.next()
            if message is None:
                break
            taken.append((message.type, len(stream.take_fds(start, parser.consumed))))
        assert taken == [(MessageType.STATUS, 0), (MessageType.SCREEN, 1)]
    finally:
        os.close(memfd)
        stream.close()
        ours.close()


def test_a_peer_sending_descriptors_no_frame_claims_is_closed(screener, photo, tmp_path):
    memfd = sealed_memfd(photo.tobytes())
    with running_server(screener, tmp_path / "r.sqlite3") as (_, address), connect(address) as client:
        client.status()
        before = open_fds()
        frame = encode_message(Message(MessageType.STATUS))
        for byte in frame[: MAX_HELD_FDS + 1]:  # a descriptor with each byte of a frame not complete yet
            client.sock.sendmsg([bytes([byte])], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [memfd]))])
        reply = client.receive()
        assert reply.meta["code"] == "bad_request" and f"at most {MAX_HELD_FDS} held" in reply.meta["message"]
        with pytest.raises(ConnectionError):
            client.receive()
        os.close(memfd)
        assert settles_to(before - 2)  # the server's end of the connection and our memfd


def test_the_descriptor_of_a_refused_frame_is_not_kept(screener, photo, tmp_path):
    """A frame the parser refuses (its CRC) or drops (it stopped arriving) takes the descriptor that
    came with it along: none is held after its ERROR, so such frames in a row never reach the limit of
    descriptors held, and the connection goes on."""
    memfd = sealed_memfd(photo.tobytes())
    frame = encode_message(Message(MessageType.SCREEN, {"request_id": "cam:1", **LAYOUT, "body": "fd"}))
    corrupted = frame[:-1] + bytes([frame[-1] ^ 0xFF])  # the payload's CRC-32
    passed = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [memfd]))]
    try:
        with running_server(screener, tmp_path / "r.sqlite3", frame_timeout=0.3) as (_, address), \
                connect(address) as client:
            client.status()
            before = open_fds()
            for _ in range(MAX_HELD_FDS + 1):
                client.sock.sendmsg([corrupted], passed)
                assert client.receive().meta["code"] == "bad_checksum"
                assert open_fds() == before
            client.sock.sendmsg([frame[:HEADER_SIZE]], passed)  # and then nothing: the frame stalls
            assert client.receive().meta["code"] == "truncated"
            assert open_fds() == before
            assert client.status()["health"] == "ok"
    finally:
        os.close(memfd)


def test_descriptors_the_kernel_drops_close_the_connection_without_blaming_the_peer(screener, photo, tmp_path,
                                                                                   caplog):
    """More descriptors in one message than a read takes: the kernel drops the rest (MSG_CTRUNC), as it
    does when the server has no free descriptor, so the reply and the log do not say whose fault it is."""
    memfd = sealed_memfd(photo.tobytes())
    frame = encode_message(Message(MessageType.STATUS))
    too_many = array.array("i", [memfd] * (4 * MAX_HELD_FDS))
    try:
        with running_server(screener, tmp_path / "r.sqlite3") as (_, address), connect(address) as client, \
                caplog.at_level("WARNING", logger="edge_retina.bridge"):
            client.status()
            before = open_fds()
            client.sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, too_many)])
            reply = client.receive()
            assert reply.meta["code"] == "bad_request"
            assert reply.meta["message"] == ("descriptors were dropped by the kernel: too many at once, or the "
                                             "server has no free descriptor")
            with pytest.raises(ConnectionError):
                client.receive()
            assert settles_to(before - 1)  # the server's end of the connection
        (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert "dropped by the kernel" in warning and "descriptors open" in warning and "limit" in warning
    finally:
        os.close(memfd)


def test_a_frame_by_fd_waiting_too_long_is_journalled_from_its_mapping(screener, photo, tmp_path, monkeypatch):
    """The journal keeps the image of a frame by fd (read from the mapping) like an inline one's,
    and the retry of its TIMEOUT gets that one screening."""
    frame = photo.tobytes()
    gate = threading.Event()
    original = screener.preprocess
    monkeypatch.setattr(screener, "preprocess", lambda *a, **k: gate.wait(30) and original(*a, **k))
    store = ResultStore(tmp_path / "r.sqlite3")
    server = BridgeServer(screener, store, BridgeConfig(request_timeout=0.3, journal_after=0.1))
    memfd = sealed_memfd(frame)
    try:
        meta = {"request_id": "cam:slow", **LAYOUT, "body": "fd"}
        assert server.handle(Message(MessageType.SCREEN, meta), [os.dup(memfd)]).meta["code"] == "timeout"
        (pending,) = store.pending()
        assert pending.image == frame and pending.image_sha256 == hashlib.sha256(frame).hexdigest()
        gate.set()
        for _ in range(100):  # the camera's retries, the same id, until its one screening is done
            reply = server.handle(Message(MessageType.SCREEN, meta), [os.dup(memfd)])
            if reply.type is MessageType.RESULT:
                break
        assert reply.meta["duplicate"] is True and reply.meta["result"]["status"] != "error"
    finally:
        gate.set()
        os.close(memfd)
        server.close()
        store.close()
