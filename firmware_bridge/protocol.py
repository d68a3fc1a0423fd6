"""Wire protocol v1 (revision 1.2) between a fundus camera and the bridge: frames, messages, error codes.

docs/PROTOCOL.md is the normative description; this module is its reference implementation.

Frame (all integers big-endian)::

    offset  size  field
    0       2     magic "ER" (0x45 0x52)
    2       1     protocol version (1)
    3       1     message type (MessageType)
    4       4     payload length N (uint32)
    8       4     CRC-32 of bytes 0..7 (header check)
    12      N     payload
    12+N    4     CRC-32 of the payload

The header has its own CRC so that a corrupted length is refused at once (a UART drops and flips
bytes) instead of making the receiver wait for a payload that never comes. The CRC is zlib's
CRC-32 (IEEE 802.3, the one in every camera SDK and in the C client).

Payload: ``uint32 M | M bytes of UTF-8 JSON object (metadata) | N - 4 - M bytes of body``. Only
SCREEN carries a body (the image), unless its image is passed as a file descriptor beside the frame
(1.2, Unix sockets): this module parses bytes only, the descriptors are the transport's
(``transports.UnixSocketStream``), matched to frames by :attr:`FrameParser.consumed`.
"""
from __future__ import annotations

import enum
import json
import struct
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterator

MAGIC = b"ER"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
#: Revision within VERSION: additions a v1 peer can ignore, on unchanged frames. 1.1 adds raw frames
#: described by pixel_format, width, height and stride (docs/PROTOCOL.md "Raw frames"); 1.2 a raw
#: frame passed as a sealed memfd over a Unix socket ("Raw frames by file descriptor").
MINOR_VERSION = 2
HEADER = struct.Struct(">2sBBI")  # magic, version, type, payload length
HEADER_SIZE = HEADER.size + 4  # + header CRC
TRAILER_SIZE = 4
#: Default largest payload accepted (a 12 MP camera JPEG is 2-6 MB; raw frames of large sensors need
#: ``--max-frame-mb``). Frames above the limit are refused from their header, before any payload is read.
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
#: Upper bound of the metadata JSON inside a payload.
MAX_METADATA = 64 * 1024


class MessageType(enum.IntEnum):
    HELLO = 0x01
    SCREEN = 0x02
    RESULT = 0x03
    STATUS = 0x04
    SELFTEST = 0x05
    ERROR = 0x7F


class ErrorCode(str, enum.Enum):
    """Typed ERROR codes (the ``code`` field of an ERROR message's metadata)."""

    BAD_MAGIC = "bad_magic"              # bytes that do not start a frame (skipped up to the next magic)
    BAD_HEADER_CHECKSUM = "bad_header_checksum"
    BAD_CHECKSUM = "bad_checksum"        # payload CRC mismatch
    UNSUPPORTED_VERSION = "unsupported_version"
    FRAME_TOO_LARGE = "frame_too_large"
    TRUNCATED = "truncated"              # a frame stopped arriving before its end (frame timeout)
    UNKNOWN_TYPE = "unknown_type"
    MALFORMED = "malformed"              # the payload is not metadata JSON + body
    BAD_REQUEST = "bad_request"          # well-formed message with missing or invalid fields
    ID_CONFLICT = "id_conflict"          # a request id reused with a different image
    BUSY = "busy"                        # queue full: retry after ``retry_after_ms``
    TIMEOUT = "timeout"                  # not screened within the request timeout: retry the same id later
    INTERNAL = "internal"


class ProtocolError(Exception):
    """A frame or message that cannot be accepted; the server answers it with an ERROR."""

    def __init__(self, code: ErrorCode, message: str, *, request_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.request_id = request_id


@dataclass(frozen=True)
class Message:
    type: MessageType
    meta: dict[str, Any] = field(default_factory=dict)
    body: bytes | memoryview = b""  # a received SCREEN's body is a view of the frame it came in


def crc32(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_payload(meta: dict[str, Any], body: bytes = b"") -> bytes:
    meta_bytes = json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode()
    return struct.pack(">I", len(meta_bytes)) + meta_bytes + body


def _checked_header(msg_type: int, length: int, version: int = VERSION) -> bytes:
    """The frame header followed by its own CRC-32."""
    header = HEADER.pack(MAGIC, version, int(msg_type), length)
    return header + struct.pack(">I", crc32(header))


def encode_frame(msg_type: int, payload: bytes, *, version: int = VERSION) -> bytes:
    # One join, one copy of the payload (a raw frame is megabytes; chained + would copy it twice).
    return b"".join((_checked_header(msg_type, len(payload), version), payload, struct.pack(">I", crc32(payload))))


#: Bytes of a body per write of :func:`frame_writes`.
WRITE_CHUNK = 1 << 20


def frame_writes(message: Message, *, chunk: int = WRITE_CHUNK) -> Iterator[list[bytes | memoryview]]:
    """The frame of ``message`` as successive gathering writes (``socket.sendmsg``): the header with
    the metadata, then the body in ``chunk``-byte views, the last one with the trailer. Nothing is
    copied, and the payload CRC is computed chunk by chunk as they are written, so the sender's
    checksum of a megabyte raw frame overlaps the receiver's work instead of preceding it."""
    prefix = encode_payload(message.meta)
    body = memoryview(message.body).cast("B")
    payload_crc = zlib.crc32(prefix)
    write: list[bytes | memoryview] = [_checked_header(message.type, len(prefix) + len(body)), prefix]
    for start in range(0, len(body), chunk):
        piece = body[start: start + chunk]
        payload_crc = zlib.crc32(piece, payload_crc)
        write.append(piece)
        if start + chunk < len(body):
            yield write
            write = []
    yield [*write, struct.pack(">I", payload_crc & 0xFFFFFFFF)]


def encode_message(message: Message) -> bytes:
    return b"".join(part for write in frame_writes(message) for part in write)


def error_message(code: ErrorCode, text: str, *, request_id: str | None = None, **extra: Any) -> Message:
    meta: dict[str, Any] = {"code": code.value, "message": text, **extra}
    if request_id is not None:
        meta["request_id"] = request_id
    return Message(MessageType.ERROR, meta)


def decode_payload(msg_type: int, payload: bytes | memoryview) -> Message:
    """Split a checked payload into metadata and body; refuse unknown types and bad metadata."""
    try:
        kind = MessageType(msg_type)
    except ValueError:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type 0x{msg_type:02x}") from None
    if len(payload) < 4:
        raise ProtocolError(ErrorCode.MALFORMED, "payload shorter than its 4-byte metadata length")
    (meta_len,) = struct.unpack_from(">I", payload)
    if meta_len > MAX_METADATA or 4 + meta_len > len(payload):
        raise ProtocolError(ErrorCode.MALFORMED, f"metadata length {meta_len} does not fit the payload")
    try:
        meta = json.loads(bytes(payload[4:4 + meta_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(ErrorCode.MALFORMED, f"metadata is not UTF-8 JSON ({exc})") from None
    except RecursionError:  # the json module recurses once per nesting level
        raise ProtocolError(ErrorCode.MALFORMED, "metadata nests too deeply") from None
    if not isinstance(meta, dict):
        raise ProtocolError(ErrorCode.MALFORMED, "metadata must be a JSON object")
    return Message(kind, meta, payload[4 + meta_len:])


class ByteBudget:
    """Bytes of frames being received, shared by every connection of a server (thread-safe): a frame
    is admitted from its header only if its payload fits, so memory is bounded by bytes in flight,
    not by the number of connections times the largest frame."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._lock = threading.Lock()

    def acquire(self, count: int) -> bool:
        with self._lock:
            if self.used + count > self.limit:
                return False
            self.used += count
            self.peak = max(self.peak, self.used)
            return True

    def release(self, count: int) -> None:
        with self._lock:
            self.used -= count


class FrameParser:
    """Incremental frame parser for a byte stream (socket, serial line).

    ``feed`` bytes as they arrive; ``next`` returns the next :class:`Message`, ``None`` when more
    bytes are needed, or raises :class:`ProtocolError` for a bad frame. After an error the parser has
    already skipped what it could not use (up to the next magic, or the whole refused frame when its
    header was valid), so calling ``next`` again resynchronises on the stream: one bad frame never
    poisons the frames after it.

    With a ``budget``, a frame's payload is reserved from it when its header arrives and given back
    when the frame has been consumed; a frame that does not fit is skipped and answered ``busy``.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD, budget: ByteBudget | None = None):
        self.max_payload = max_payload
        self.budget = budget
        self._buffer = bytearray()
        self._skip = 0  # payload bytes of a refused (oversized) frame still to discard
        self._reserved = 0  # bytes of the budget held by the frame being received
        # CRC-32 of the first ``_checked`` payload bytes of the frame being received: computed as the
        # bytes arrive, while the sender is still sending, not all at once at the end (a raw frame is
        # megabytes). (The body's sha256 is the server's business, off the receiving path.)
        self._checked = 0
        self._crc = 0
        self._fed = 0  # bytes fed so far, kept or dropped

    def feed(self, data: bytes) -> None:
        self._fed += len(data)
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        self._buffer += data

    @property
    def consumed(self) -> int:
        """Offset in the stream of the first byte not consumed yet: after :meth:`next` returned a
        message, its frame is the bytes from the value before the call to this one (the transport
        hands the file descriptors that came with those bytes to that message)."""
        return self._fed - len(self._buffer)

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held (0 when idle between frames)."""
        return len(self._buffer) + self._skip

    def discard(self) -> None:
        """Drop an incomplete frame (the sender stopped mid-frame)."""
        self._buffer.clear()
        self._skip = 0
        self._give_back()

    def _give_back(self) -> None:
        self._checked = self._crc = 0  # the frame is over, whatever became of it
        if self._reserved:
            self.budget.release(self._reserved)
            self._reserved = 0

    def next(self) -> Message | None:
        buf = self._buffer
        if not buf:
            return None
        if not buf.startswith(MAGIC[: len(buf)]):
            self._resync(1)
            raise ProtocolError(ErrorCode.BAD_MAGIC, "bytes outside a frame (skipped to the next magic)")
        if len(buf) < HEADER_SIZE:
            return None
        magic, version, msg_type, length = HEADER.unpack_from(buf)
        (header_crc,) = struct.unpack_from(">I", buf, HEADER.size)
        if crc32(bytes(buf[: HEADER.size])) != header_crc:
            self._resync(len(MAGIC))
            raise ProtocolError(ErrorCode.BAD_HEADER_CHECKSUM, "frame header checksum mismatch")
        if length > self.max_payload:
            del buf[:HEADER_SIZE]
            self._skip_bytes(length + TRAILER_SIZE)
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE, f"payload of {length} bytes is over the limit of {self.max_payload}"
            )
        if self.budget is not None and not self._reserved and length:
            if not self.budget.acquire(length):
                del buf[:HEADER_SIZE]
                self._skip_bytes(length + TRAILER_SIZE)
                raise ProtocolError(ErrorCode.BUSY, "the server is receiving too many bytes at once")
            self._reserved = length
        self._check_arrived(buf, length)
        end = HEADER_SIZE + length + TRAILER_SIZE
        if len(buf) < end:
            return None
        # The frame's buffer becomes the message's: its body is a view of it, never copied (a raw
        # frame is megabytes). What follows the frame (at most one read's worth) moves to a new buffer.
        self._buffer = buf[end:]
        computed_crc = self._crc & 0xFFFFFFFF
        try:
            return self._complete_frame(memoryview(buf)[:end], version, msg_type, length, computed_crc)
        finally:
            self._give_back()

    def _check_arrived(self, buf: bytearray, length: int) -> None:
        """Fold the payload bytes that arrived since the last call into the CRC."""
        arrived = min(len(buf), HEADER_SIZE + length) - HEADER_SIZE
        if arrived <= self._checked:
            return
        with memoryview(buf) as view, view[HEADER_SIZE + self._checked: HEADER_SIZE + arrived] as fresh:
            self._crc = zlib.crc32(fresh, self._crc)
        self._checked = arrived

    @staticmethod
    def _complete_frame(frame: memoryview, version: int, msg_type: int, length: int, computed_crc: int) -> Message:
        payload = frame[HEADER_SIZE: HEADER_SIZE + length]
        (payload_crc,) = struct.unpack_from(">I", frame, HEADER_SIZE + length)
        if version not in SUPPORTED_VERSIONS:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_VERSION,
                f"protocol version {version} is not supported (supported: {list(SUPPORTED_VERSIONS)})",
            )
        if computed_crc != payload_crc:
            raise ProtocolError(ErrorCode.BAD_CHECKSUM, "payload checksum mismatch")
        return decode_payload(msg_type, payload)

    def _resync(self, start: int) -> None:
        """Drop bytes up to the next possible frame start at or after ``start``."""
        buf = self._buffer
        index = buf.find(MAGIC, start)
        if index < 0:
            # Keep a trailing first magic byte: the rest of the magic may still be on its way.
            index = len(buf) - 1 if buf.endswith(MAGIC[:1]) else len(buf)
        del buf[:index]

    def _skip_bytes(self, count: int) -> None:
        dropped = min(count, len(self._buffer))
        del self._buffer[:dropped]
        self._skip = count - dropped
