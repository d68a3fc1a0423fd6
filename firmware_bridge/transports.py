"""Byte streams and listeners for the bridge: Unix domain socket, TCP, serial line.

A :class:`Stream` is what one connection loop talks to: ``read`` returns bytes, ``None`` when
nothing arrived within the poll interval, or ``b""`` at end of stream.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
import time
from pathlib import Path
from typing import Iterator, Protocol

log = logging.getLogger("edge_retina.bridge")

#: How long a read waits before the connection loop gets control back (to notice a stalled frame
#: or a stop request).
POLL_SECONDS = 0.2
_READ_SIZE = 256 * 1024


class Stream(Protocol):
    name: str

    def read(self) -> bytes | None: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class SocketStream:
    def __init__(self, sock: socket.socket, name: str):
        self.sock = sock
        self.name = name
        sock.settimeout(POLL_SECONDS)

    def read(self) -> bytes | None:
        try:
            return self.sock.recv(_READ_SIZE)
        except socket.timeout:
            return None
        except (ConnectionResetError, BrokenPipeError):
            return b""

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

    def __init__(self, sock: socket.socket, address: str, cleanup: Path | None = None):
        self.sock = sock
        self.address = address
        self._cleanup = cleanup
        sock.settimeout(POLL_SECONDS)
        sock.listen(16)

    def accept(self) -> Stream | None:
        try:
            conn, peer = self.sock.accept()
        except socket.timeout:
            return None
        return SocketStream(conn, f"{self.address} <- {peer or 'local'}")

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
    return SocketListener(sock, f"unix:{path}", cleanup=path)


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
