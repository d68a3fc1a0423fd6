"""Hostile peers of the bridge (issue 14): hostile metadata, memory admission by bytes in flight,
idle and silent connections, ERROR floods; and a fuzz test of the metadata checks."""
from __future__ import annotations

import json
import os
import select
import socket
import threading
import time

import pytest
from bridge_support import connect, running_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge.protocol import (
    HEADER_SIZE,
    ByteBudget,
    ErrorCode,
    FrameParser,
    Message,
    MessageType,
    ProtocolError,
    decode_payload,
    encode_frame,
    encode_message,
    encode_payload,
)
from firmware_bridge.screen_request import validate_screen
from firmware_bridge.server import BridgeServer
from firmware_bridge.store import ResultStore

NESTED = b"[" * 30_000 + b"]" * 30_000  # 60 KB: under the metadata limit, deeper than json can recurse
STATUS = encode_message(Message(MessageType.STATUS))


def _nested_frame() -> bytes:
    return encode_frame(MessageType.HELLO, len(NESTED).to_bytes(4, "big") + NESTED)


def read_replies(sock: socket.socket, count: int | None = None, timeout: float = 10.0) -> tuple[list[Message], bool]:
    """Replies until ``count`` arrived or the server closed the connection: (replies, closed)."""
    parser, got = FrameParser(max_payload=1 << 24), []
    deadline = time.monotonic() + timeout
    while count is None or len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} replies"
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return got, True
        parser.feed(chunk)
        while (message := parser.next()) is not None:
            got.append(message)
    return got, False


def unix_socket(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(address.partition(":")[2])
    return sock


def test_deeply_nested_metadata_is_malformed_not_a_crash():
    with pytest.raises(ProtocolError) as info:
        decode_payload(MessageType.HELLO, len(NESTED).to_bytes(4, "big") + NESTED)
    assert info.value.code is ErrorCode.MALFORMED


def test_nested_metadata_over_a_socket_keeps_the_connection(screener, tmp_path):
    with running_server(screener, tmp_path / "r.sqlite3") as (server, address), unix_socket(address) as sock:
        sock.sendall(_nested_frame() + STATUS)
        replies, closed = read_replies(sock, 2)
        assert [r.meta.get("code") for r in replies] == ["malformed", None] and not closed
        assert replies[1].type is MessageType.STATUS


def test_nested_metadata_over_a_serial_line_keeps_the_server(screener, tmp_path):
    pytest.importorskip("serial")
    from firmware_bridge.transports import SerialStream

    master, slave = os.openpty()
    server = BridgeServer(screener, ResultStore(tmp_path / "r.sqlite3"))
    thread = threading.Thread(target=server.serve_stream, args=(SerialStream(os.ttyname(slave)),), daemon=True)
    thread.start()
    try:
        os.write(master, _nested_frame() + STATUS)
        parser, replies, deadline = FrameParser(), [], time.monotonic() + 20
        while len(replies) < 2 and time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                parser.feed(os.read(master, 65536))
            while (reply := parser.next()) is not None:
                replies.append(reply)
        assert [r.meta.get("code") for r in replies] == ["malformed", None] and thread.is_alive()
    finally:
        server.close()
        thread.join(timeout=5)
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("meta, body", [
    ({"captured_at": "inf"}, b"\xff\xd8"),
    ({"captured_at": "1e400"}, b"\xff\xd8"),
    ({"captured_at": "nan"}, b"\xff\xd8"),
    ({"format": "raw", "shape": [True, True, True]}, b"\x01"),
    ({"format": "raw", "shape": [1.0, 1]}, b"\x01"),
], ids=["inf", "1e400", "nan", "bool-shape", "float-shape"])
def test_hostile_fields_are_bad_requests(screener, tmp_path, meta, body):
    server = BridgeServer(screener, ResultStore(tmp_path / "r.sqlite3"))
    try:
        reply = server.handle(Message(MessageType.SCREEN, {"request_id": "x1", "format": "jpeg", **meta}, body))
    finally:
        server.close()
    assert reply.type is MessageType.ERROR and reply.meta["code"] == "bad_request", reply.meta


def test_frames_are_admitted_by_bytes_in_flight(screener, tmp_path):
    """Six connections each start a frame of the largest size; only what fits the byte budget is
    received, the others get busy from their header, and the budget is all given back."""
    max_payload = 64 * 1024
    frame = encode_frame(MessageType.STATUS, encode_payload({}, b"\0" * (max_payload - 8)))
    with running_server(screener, tmp_path / "r.sqlite3", max_payload=max_payload,
                        max_inflight_bytes=2 * max_payload) as (server, address):
        sockets = [unix_socket(address) for _ in range(6)]
        for sock in sockets:
            sock.sendall(frame[:HEADER_SIZE + 10])  # a header and a stalled payload
        time.sleep(0.5)
        answers = []
        for sock in sockets:
            sock.settimeout(0.2)
            try:
                answers.append(read_replies(sock, 1, timeout=0.3)[0][0].meta.get("code"))
            except (socket.timeout, AssertionError):
                answers.append(None)  # still receiving: admitted
        assert answers.count("busy") == 4 and answers.count(None) == 2
        assert server.inflight.peak <= 2 * max_payload
        for sock in sockets:
            sock.close()
        deadline = time.monotonic() + 5
        while server.inflight.used and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.inflight.used == 0


def test_silent_connections_are_closed_and_free_their_slots(screener, tmp_path):
    with running_server(screener, tmp_path / "r.sqlite3", max_connections=2, handshake_timeout=0.3,
                        idle_timeout=0.6) as (server, address):
        silent = [unix_socket(address) for _ in range(2)]
        replies, closed = read_replies(silent[0], timeout=5)
        assert closed and replies[-1].meta["code"] == "timeout" and "nothing sent" in replies[-1].meta["message"]
        assert read_replies(silent[1], timeout=5)[1]
        with connect(address) as client:  # the slots are free again
            assert client.status()["health"] == "ok"
        for sock in silent:
            sock.close()


def test_idle_connection_after_a_request_is_closed(screener, tmp_path):
    with running_server(screener, tmp_path / "r.sqlite3", idle_timeout=0.4) as (server, address), \
            unix_socket(address) as sock:
        sock.sendall(STATUS)
        replies, closed = read_replies(sock, timeout=5)
        assert replies[0].type is MessageType.STATUS
        assert closed and replies[-1].meta["code"] == "timeout" and "idle" in replies[-1].meta["message"]


def test_junk_does_not_turn_into_a_flood_of_errors(screener, tmp_path):
    junk = (b"ER" + bytes(10)) * (64 * 1024 // 12)  # 64 KiB of bad headers, each one its own error
    with running_server(screener, tmp_path / "r.sqlite3", max_consecutive_errors=8) as (server, address), \
            unix_socket(address) as sock:
        try:
            sock.sendall(junk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the server mid-way: what is being tested
        replies, closed = read_replies(sock, timeout=5)
    assert closed and len(replies) == 8
    assert sum(len(encode_message(r)) for r in replies) < len(junk) // 20


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
screen_meta = st.fixed_dictionaries({}, optional={
    "request_id": st.one_of(json_values, st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)),
    "format": st.one_of(json_values, st.sampled_from(["jpeg", "png", "raw"])),
    "shape": st.one_of(json_values, st.lists(st.one_of(st.integers(-2, 4), st.booleans()), max_size=4)),
    "eye": st.one_of(json_values, st.sampled_from(["left", "right", "unknown"])),
    "patient": json_values,
    "captured_at": st.one_of(json_values, st.sampled_from(["inf", "-1e400", "2026-01-01T00:00:00Z", "nan"])),
})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(screen_meta, st.binary(max_size=64))
def test_any_screen_metadata_is_accepted_or_a_bad_request(meta, body):
    """Metadata as the wire delivers it (through JSON) is either valid or refused as bad_request:
    never another exception, which would reach the camera as 'internal'."""
    wire = decode_payload(MessageType.SCREEN, encode_payload(meta, body))
    try:
        clean = validate_screen(wire.meta, wire.body)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST
    else:
        json.dumps(clean)  # what is journaled


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8), st.integers(0, 2048))
def test_any_byte_stream_with_a_budget_gives_the_budget_back(chunks, limit):
    budget = ByteBudget(limit)
    parser = FrameParser(max_payload=1024, budget=budget)
    for chunk in chunks:
        parser.feed(chunk)
        while True:
            try:
                if parser.next() is None:
                    break
            except ProtocolError:
                continue
        assert 0 <= budget.used <= limit
    parser.discard()
    assert budget.used == 0
