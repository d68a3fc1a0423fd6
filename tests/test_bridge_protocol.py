"""Wire protocol v1: frame codec and the incremental parser, including a property-based fuzz test."""
from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_bridge.protocol import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    ErrorCode,
    FrameParser,
    Message,
    MessageType,
    ProtocolError,
    crc32,
    encode_frame,
    encode_message,
    encode_payload,
)

SCREEN = Message(MessageType.SCREEN, {"request_id": "cam1:0001", "format": "jpeg", "eye": "left"}, b"\xff\xd8 image")


def parse_all(data: bytes, max_payload: int = 1 << 20) -> list[Message | str]:
    """Every message and error code the parser finds in ``data``, in order."""
    parser = FrameParser(max_payload)
    parser.feed(data)
    found: list[Message | str] = []
    while True:
        try:
            message = parser.next()
        except ProtocolError as exc:
            found.append(exc.code.value)
            continue
        if message is None:
            return found
        found.append(message)


def test_frame_layout_matches_the_protocol_document():
    frame = encode_message(SCREEN)
    magic, version, msg_type, length = HEADER.unpack_from(frame)
    assert (magic, version, msg_type) == (b"ER", 1, 0x02)
    assert len(frame) == HEADER_SIZE + length + 4
    assert struct.unpack_from(">I", frame, 8)[0] == crc32(frame[:8])
    assert struct.unpack_from(">I", frame, len(frame) - 4)[0] == crc32(frame[HEADER_SIZE:-4])
    assert crc32(b"123456789") == 0xCBF43926  # the CRC-32/IEEE check value the C client must match


@pytest.mark.parametrize("message", [
    Message(MessageType.HELLO, {"versions": [1]}),
    SCREEN,
    Message(MessageType.STATUS),
    Message(MessageType.ERROR, {"code": "busy", "message": "é ünïcode"}),
])
def test_round_trip_byte_by_byte(message):
    parser = FrameParser()
    decoded = []
    for byte in encode_message(message) * 2:
        parser.feed(bytes([byte]))
        got = parser.next()
        if got is not None:
            decoded.append(got)
    assert decoded == [message, message]


def corrupt(frame: bytes, offset: int) -> bytes:
    return frame[:offset] + bytes([frame[offset] ^ 0x40]) + frame[offset + 1:]


GOOD = encode_message(Message(MessageType.STATUS))


@pytest.mark.parametrize("bad, code", [
    (corrupt(encode_message(SCREEN), HEADER_SIZE + 3), "bad_checksum"),
    (corrupt(encode_message(SCREEN), 5), "bad_header_checksum"),  # a flipped length bit
    (encode_frame(MessageType.STATUS, encode_payload({}), version=2), "unsupported_version"),
    (encode_frame(0x33, encode_payload({})), "unknown_type"),
    (encode_frame(MessageType.HELLO, b"\x00\x00\x00\x09{not json}"), "malformed"),
    (encode_frame(MessageType.HELLO, b"\x00\x00\x00\x02[]"), "malformed"),
    (encode_frame(MessageType.HELLO, b"\x00\x00"), "malformed"),
    (b"GARBAGE\r\n", "bad_magic"),
])
def test_bad_frame_is_reported_and_the_next_frame_still_parses(bad, code):
    found = parse_all(bad + GOOD)
    assert code in found
    assert [x for x in found if x not in (code, "bad_magic")] == [Message(MessageType.STATUS)]
    assert found[-1] == Message(MessageType.STATUS)


def test_oversized_frame_is_refused_from_its_header_and_skipped_as_it_arrives():
    parser = FrameParser(max_payload=100)
    big = encode_frame(MessageType.SCREEN, encode_payload({"request_id": "x"}, b"\0" * 5000))
    parser.feed(big[:HEADER_SIZE])
    with pytest.raises(ProtocolError) as refused:
        parser.next()
    assert refused.value.code is ErrorCode.FRAME_TOO_LARGE
    for start in range(HEADER_SIZE, len(big), 777):  # the refused payload keeps arriving
        parser.feed(big[start:start + 777])
        assert parser.next() is None
    parser.feed(GOOD)
    assert parser.next() == Message(MessageType.STATUS)


def test_truncated_frame_waits_and_can_be_discarded():
    parser = FrameParser()
    parser.feed(encode_message(SCREEN)[:-3])
    assert parser.next() is None and parser.pending > 0
    parser.discard()
    parser.feed(GOOD)
    assert parser.next() == Message(MessageType.STATUS)


messages = st.builds(
    Message,
    st.sampled_from(list(MessageType)),
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=20), st.booleans()), max_size=4),
    st.binary(max_size=300),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=1, max_size=4), st.data())
def test_any_chunking_of_valid_frames_gives_back_the_messages(sent, data):
    stream = b"".join(encode_message(m) for m in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    parser = FrameParser()
    received = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)]):
        parser.feed(stream[start:end])
        while (message := parser.next()) is not None:
            received.append(message)
    assert received == sent


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6))
def test_garbage_and_mutated_frames_only_ever_raise_protocol_errors_and_resync(noise, flips):
    """Whatever arrives, the parser raises nothing but ProtocolError, consumes everything, and a valid
    frame sent after the damage is still recognised."""
    stream = bytearray(noise + encode_message(SCREEN))
    for offset, value in flips:
        if stream:
            stream[offset % len(stream)] = value
    # Valid frames after damage: the first may be swallowed by a damaged header that claims a long
    # payload, so send enough of them to outlast the largest claim the parser accepts (1 KiB here).
    tail = GOOD * (1024 // len(GOOD) + 2)
    found = parse_all(bytes(stream) + tail, max_payload=1024)
    assert all(isinstance(x, (str, Message)) for x in found)
    assert found[-1] == Message(MessageType.STATUS)


def test_magic_split_across_reads_is_not_lost():
    parser = FrameParser()
    parser.feed(b"xxE")
    with pytest.raises(ProtocolError):
        parser.next()
    parser.feed(GOOD[1:])
    assert parser.next() == Message(MessageType.STATUS)
    assert MAGIC == b"ER"


def test_the_screen_request_schema_is_the_documented_one():
    from pathlib import Path

    from firmware_bridge.screen_request import IMAGE_FORMATS, SCHEMA_PATH

    documented = Path(__file__).parents[1] / "docs" / "bridge_screen_request.schema.json"
    assert documented.resolve() == SCHEMA_PATH.resolve() and IMAGE_FORMATS == ("jpeg", "png", "raw")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(1, 700), min_size=1, max_size=8), st.integers(0, 2000))
def test_checksum_and_body_digest_computed_as_the_bytes_arrive(body, reads, flip):
    """The CRC and the body's sha256 are folded in read by read: any split of the frame gives the
    whole body's digest, and a damaged payload byte is still refused."""
    frame = bytearray(encode_message(Message(MessageType.SCREEN, {"request_id": "d"}, body)))
    for damaged in (False, True):
        stream = bytearray(frame)
        if damaged:
            stream[HEADER_SIZE + flip % (len(frame) - HEADER_SIZE - 4)] ^= 0x01
        parser, start, got = FrameParser(), 0, None
        for size in itertools.cycle(reads):
            parser.feed(bytes(stream[start:start + size]))
            start += size
            try:
                got = parser.next()
            except ProtocolError as exc:
                got = exc
            if got is not None or start >= len(stream):
                break
        if damaged:
            assert isinstance(got, ProtocolError) and got.code is ErrorCode.BAD_CHECKSUM
        else:
            assert got.body == body
            assert parser.pending == 0
