"""Byte streams and listeners for the bridge: Unix domain socket, TCP, serial line.

A :class:`Stream` is what one connection loop talks to: ``read`` returns bytes, ``None`` when
nothing arrived within the poll interval, or ``b""`` at end of stream. A Unix socket on Linux also
passes file descriptors (protocol 1.2: a raw frame as a sealed memfd, docs/PROTOCOL.md), which its
stream holds until the server takes them (``take_fds``) with the bytes they came with, and
:func:`map_sealed_frame` maps.
"""
from __future__ import annotations

import array
import collections
import ipaddress
import logging
import mmap
import os
import socket
import stat
import time
from pathlib import Path
from typing import Iterator, Protocol

from .protocol import ErrorCode, ProtocolError

log = logging.getLogger("edge_retina.bridge")

#: How long a read waits before the connection loop gets control back (to notice a stalled frame
#: or a stop request).
POLL_SECONDS = 0.2
_READ_SIZE = 256 * 1024
#: File descriptors a Unix socket connection may hold before the frames they came with are complete.
#: A frame brings at most one, and a read can end in the next frame: more is a peer sending descriptors
#: no frame claims, each one a slot of the server's descriptor table (RLIMIT_NOFILE), so it is refused.
MAX_HELD_FDS = 4
#: Whether this system passes frames by descriptor: memfd and its seals are Linux's (``fcntl``'s
#: F_SEAL_* constants); elsewhere a Unix socket carries bytes only, and HELLO does not offer it.
FRAMES_BY_FD = hasattr(os, "memfd_create")
#: The seals (names in ``fcntl``) a frame passed by descriptor must have: nobody can write it
#: (F_SEAL_WRITE also refuses to be set while a writable shared mapping exists), so the image the
#: server checked, hashed and screens is the one it stores; nobody can shrink it, which would make
#: the server's mapping fault (SIGBUS) on the pages cut off; nor grow it, so its size stays the one
#: checked against the metadata.
REQUIRED_SEALS = ("F_SEAL_WRITE", "F_SEAL_SHRINK", "F_SEAL_GROW")


class TooManyFds(Exception):
    """More file descriptors came than a connection's frames can claim: it gets one bad_request (this
    message) and is closed. Raised as such when a peer sends them; see :class:`FdsDropped`."""


class FdsDropped(TooManyFds):
    """The kernel dropped descriptors passed to a connection (MSG_CTRUNC): more in one message than a
    read takes, or no free slot in the server's descriptor table, which is the server's state, not the
    peer's doing. Which frame lost its descriptor is unknown, so the connection is closed too."""


class Stream(Protocol):
    name: str

    def read(self) -> bytes | None: ...

    def take_fds(self, start: int, end: int) -> list[int] | None:
        """The file descriptors that came with stream bytes ``start`` to ``end`` - 1, now the caller's to
        close; None from a stream that cannot pass descriptors (TCP, a serial line, a Unix socket where
        memfd does not exist)."""

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class SocketStream:
    def __init__(self, sock: socket.socket, name: str):
        self.sock = sock
        self.name = name
        sock.settimeout(POLL_SECONDS)

    def read(self) -> bytes | None:
        try:
            return self._receive()
        except socket.timeout:
            return None
        except (ConnectionResetError, BrokenPipeError):
            return b""

    def _receive(self) -> bytes:
        return self.sock.recv(_READ_SIZE)

    def take_fds(self, start: int, end: int) -> list[int] | None:
        return None

    def write(self, data: bytes) -> None:
        # A slow reader must not block the loop for ever: the send gets its own, longer deadline.
        self.sock.settimeout(30.0)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.settimeout(POLL_SECONDS)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class UnixSocketStream(SocketStream):
    """A Unix socket connection, whose peer may pass file descriptors (SCM_RIGHTS) with its bytes.

    Each descriptor received is held, tagged with the stream offset of the last byte that came with
    it, until the server takes it with the frame holding that byte (:meth:`take_fds`). The kernel
    hands descriptors over with the bytes of the ``sendmsg`` that sent them, and a read stops after
    them, so that byte belongs to the sender's write that carried the descriptor: a client sending a
    descriptor with a write inside the frame that declares it (protocol 1.2) gets it matched to that
    frame even when its frames are pipelined. Every held descriptor is closed with the stream.
    """

    def __init__(self, sock: socket.socket, name: str):
        super().__init__(sock, name)
        self._received = 0  # bytes read so far: the stream offset of the next byte
        self._fds: collections.deque[tuple[int, int]] = collections.deque()  # (offset, descriptor)
        # Ancillary room of one read: one descriptor more than may be held, so a read bringing too many is seen.
        self._fd_room = socket.CMSG_SPACE((MAX_HELD_FDS + 1) * array.array("i").itemsize)

    def _receive(self) -> bytes:
        data, ancillary, flags, _ = self.sock.recvmsg(_READ_SIZE, self._fd_room, socket.MSG_CMSG_CLOEXEC)
        self._received += len(data)
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self._fds.extend((self._received - 1, fd) for fd in fds)
        if flags & socket.MSG_CTRUNC:  # the kernel closed those that did not fit the room or the table
            self._close_fds()
            raise FdsDropped("descriptors were dropped by the kernel: too many at once, or the server has no "
                             "free descriptor")
        if len(self._fds) > MAX_HELD_FDS:
            self._close_fds()
            raise TooManyFds(f"more file descriptors than the frames sent can carry (one per SCREEN with "
                             f"body fd; at most {MAX_HELD_FDS} held): closing")
        return data

    def take_fds(self, start: int, end: int) -> list[int]:
        """The descriptors that came with stream bytes ``start`` to ``end`` - 1 (one frame, or the bytes
        of a refused one, see ``FrameParser.consumed``), oldest first, now the caller's to close. Any held
        from before ``start`` (they came with the rest of a refused frame, dropped as it arrived) are closed."""
        taken = []
        while self._fds and self._fds[0][0] < end:
            offset, fd = self._fds.popleft()
            if offset >= start:
                taken.append(fd)
            else:
                os.close(fd)
        return taken

    def _close_fds(self) -> None:
        while self._fds:
            os.close(self._fds.popleft()[1])

    def close(self) -> None:
        self._close_fds()
        super().close()


def descriptor_use() -> str:
    """How many descriptors this process has open, of how many it may (Linux, where descriptors are
    passed: each one received takes a slot)."""
    import resource  # here, not at the top: Windows has none, and the bridge serves TCP and serial lines there

    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    try:
        open_now = len(os.listdir("/proc/self/fd")) - 1  # less the one listing them
    except OSError:  # EMFILE: not one free to list them with
        return f"this process has all the descriptors of its limit of {limit} open (ulimit -n)"
    return f"this process has {open_now} descriptors open of its limit of {limit} (ulimit -n)"


def map_sealed_frame(fd: int, max_size: int) -> memoryview:
    """A read-only view of the frame in the sealed memfd ``fd`` (the pixels are neither read nor
    copied: they are the sender's pages, mapped). ``ProtocolError``: ``bad_request`` for a descriptor
    that is not a memfd with :data:`REQUIRED_SEALS`, holds nothing or cannot be mapped read-only (opened
    write-only; the kernel's ENOMEM...); ``frame_too_large`` above ``max_size`` bytes, the limit of a
    frame's payload. ``fd`` stays the caller's to close; the mapping holds a duplicate of its own
    (CPython's mmap keeps one) until the view is released, so each frame mapped holds a descriptor."""
    import fcntl  # here, not at the top: Windows has none, and the bridge serves TCP and serial lines there

    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:  # EINVAL: not a file that takes seals (a pipe, a file on disk, a socket...)
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the file descriptor passed is not a memfd (memfd_create "
                                                   "with MFD_ALLOW_SEALING)") from None
    missing = [name for name in REQUIRED_SEALS if not seals & getattr(fcntl, name)]
    if missing:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"the memfd passed is not sealed with {' | '.join(missing)} "
                                                   "(fcntl F_ADD_SEALS): the sender could still change the frame")
    size = os.fstat(fd).st_size
    if size > max_size:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE,
                            f"the frame passed by file descriptor is {size} bytes, over the limit of {max_size}")
    if size == 0:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "the memfd passed is empty")
    try:
        mapping = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    except OSError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"the memfd passed cannot be mapped read-only "
                                                   f"({exc.strerror})") from None
    return memoryview(mapping)


class SerialStream:
    """A UART or USB-CDC port (pyserial): one camera, one stream, no end of stream."""

    def __init__(self, device: str, baudrate: int = 115200):
        import serial  # pyserial (a base dependency): loaded only when a serial line is served

        self.device, self.baudrate = device, baudrate
        self.name = f"serial:{device}"
        try:
            self.port = serial.Serial(device, baudrate=baudrate, timeout=POLL_SECONDS, write_timeout=30.0)
        except serial.SerialException as exc:  # its message names the port twice, with two errnos
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise OSError(f"cannot open {device}: {reason}") from exc

    def read(self) -> bytes | None:
        first = self.port.read(1)
        if not first:
            return None
        return first + self.port.read(self.port.in_waiting)

    def take_fds(self, start: int, end: int) -> list[int] | None:
        return None

    def write(self, data: bytes) -> None:
        self.port.write(data)
        self.port.flush()

    def close(self) -> None:
        self.port.close()


class Listener(Protocol):
    address: str

    def accept(self) -> Stream | None: ...

    def close(self) -> None: ...


class SocketListener:
    """Accepts connections on a bound socket; ``accept`` returns None every poll interval."""

    def __init__(self, sock: socket.socket, address: str, cleanup: Path | None = None,
                 stream: type[SocketStream] = SocketStream):
        self.sock = sock
        self.address = address
        self._cleanup = cleanup
        self._stream = stream
        sock.settimeout(POLL_SECONDS)
        sock.listen(16)

    def accept(self) -> Stream | None:
        try:
            conn, peer = self.sock.accept()
        except socket.timeout:
            return None
        return self._stream(conn, f"{self.address} <- {peer or 'local'}")

    def close(self) -> None:
        self.sock.close()
        if self._cleanup is not None:
            self._cleanup.unlink(missing_ok=True)


def unix_listener(path: str | Path) -> SocketListener:
    path = Path(path)
    # A socket file left by a killed server would make bind fail; anything else at that path is not ours.
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(f"{path} exists and is not a socket; refusing to replace it")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(os.fspath(path))
    return SocketListener(sock, f"unix:{path}", cleanup=path, stream=UnixSocketStream if FRAMES_BY_FD else SocketStream)


def parse_tcp_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``PORT`` (loopback). Port 0 picks a free port. ValueError, saying what a
    valid address is, for anything else (a port that is not a number or above 65535)."""
    host, _, port = text.rpartition(":")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"{text!r} is not [HOST:]PORT (0-65535)")
    return (host.strip("[]") or "127.0.0.1"), int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def tcp_listener(host: str, port: int) -> SocketListener:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_host, bound_port = sock.getsockname()[:2]
    return SocketListener(sock, f"tcp:{bound_host}:{bound_port}")


def serial_streams(first: SerialStream, stop_requested) -> Iterator[SerialStream]:
    """``first``, then its port opened again (with back-off) each time it fails: a camera reboot or
    a re-plugged USB-CDC cable makes the device node disappear for a while, so the bridge waits for
    it rather than exit. One warning per outage names the port and why it cannot be opened."""
    yield first
    delay, warned = 0.5, False
    while not stop_requested():
        try:
            stream = SerialStream(first.device, first.baudrate)
        except OSError as exc:
            if not warned:
                log.warning("%s; opening it again until it is back", exc)
                warned = True
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        if warned:
            log.info("%s: open again", first.name)
        delay, warned = 0.5, False
        yield stream
