"""A Python client of the bridge: for host-side tools, the tests and the benchmark.

(Camera firmware embeds the C client in ``firmware_bridge/c_client/``, which speaks the same frames.)
"""
from __future__ import annotations

import array
import os
import socket
import time
from typing import Any

from .protocol import ErrorCode, FrameParser, Message, MessageType, frame_writes
from .screen_request import FD_BODY
from .transports import REQUIRED_SEALS, parse_tcp_address


def sealed_memfd(frame: bytes | memoryview) -> int:
    """A new memfd holding ``frame``, sealed as the bridge requires of a frame passed by file
    descriptor (protocol 1.2): the caller closes it once sent. Writing the frame into it is the one
    copy of that route (a camera that captures into a memfd has none). Linux only."""
    import fcntl  # here, not at the top: Windows has none, and the bridge serves TCP and serial lines there

    fd = os.memfd_create("edge-retina-frame", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(frame).cast("B")
        while view:
            view = view[os.write(fd, view):]
        seals = sum(getattr(fcntl, name) for name in REQUIRED_SEALS) | fcntl.F_SEAL_SEAL  # SEAL: no more changes
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


class BridgeError(Exception):
    """The server answered with an ERROR."""

    def __init__(self, meta: dict[str, Any]):
        super().__init__(f"{meta.get('code')}: {meta.get('message')}")
        self.code = meta.get("code")
        self.meta = meta


class BridgeClient:
    def __init__(self, sock: socket.socket, *, timeout: float = 60.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self._parser = FrameParser(max_payload=1 << 30)
        #: The server's HELLO on this connection (None until :meth:`hello`).
        self.server_hello: dict[str, Any] | None = None

    @classmethod
    def tcp(cls, address: str, **kwargs: Any) -> "BridgeClient":
        return cls(socket.create_connection(parse_tcp_address(address)), **kwargs)

    @classmethod
    def unix(cls, path: str, **kwargs: Any) -> "BridgeClient":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        return cls(sock, **kwargs)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "BridgeClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, message: Message, fds: tuple[int, ...] = ()) -> Message:
        """Send one message and return the reply (an ERROR reply is returned, not raised)."""
        self.send(message, fds)
        return self.receive()

    def send(self, message: Message, fds: tuple[int, ...] = ()) -> None:
        """Write one message's frame (without copying its body); ``fds`` (a Unix socket only) are
        passed with its first write, inside the frame, which is how the server matches them to it."""
        for write in frame_writes(message):
            self._send_all(write, fds)
            fds = ()

    def _send_all(self, parts: list[bytes | memoryview], fds: tuple[int, ...] = ()) -> None:
        """One gathering write of ``parts``, resumed where the socket stopped taking bytes; ``fds``
        go with its first bytes."""
        views = [memoryview(part) for part in parts]
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        while views:
            sent = self.sock.sendmsg(views, ancillary)
            ancillary = []
            while views and sent >= len(views[0]):
                sent -= len(views.pop(0))
            if views:
                views[0] = views[0][sent:]

    def receive(self) -> Message:
        while True:
            message = self._parser.next()
            if message is not None:
                return message
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection")
            self._parser.feed(data)

    def call(self, message: Message) -> dict[str, Any]:
        """Send one message; return the reply's metadata or raise :class:`BridgeError`."""
        reply = self.request(message)
        if reply.type is MessageType.ERROR:
            raise BridgeError(reply.meta)
        return reply.meta

    def hello(self, versions: tuple[int, ...] = (1,)) -> dict[str, Any]:
        self.server_hello = self.call(Message(MessageType.HELLO, {"versions": list(versions),
                                                                  "client": "edge-retina-python"}))
        return self.server_hello

    @property
    def offers_fd_bodies(self) -> bool:
        """Whether the server's HELLO on this connection offered frames by file descriptor (``body``
        fd, 1.2: a Unix socket on Linux); False before :meth:`hello`."""
        return FD_BODY in (self.server_hello or {}).get("body_transports", ())

    def status(self) -> dict[str, Any]:
        return self.call(Message(MessageType.STATUS))

    def selftest(self) -> dict[str, Any]:
        return self.call(Message(MessageType.SELFTEST))

    def screen(self, request_id: str, image: bytes | memoryview, *, image_format: str = "jpeg", busy_retries: int = 100,
               fds: tuple[int, ...] = (), **meta: Any) -> dict[str, Any]:
        """SCREEN one image; on BUSY wait ``retry_after_ms`` and send it again (same request id)."""
        message = Message(MessageType.SCREEN, {"request_id": request_id, "format": image_format, **meta}, image)
        for _ in range(busy_retries):
            reply = self.request(message, fds)
            if reply.type is MessageType.ERROR and reply.meta.get("code") == ErrorCode.BUSY.value:
                time.sleep(reply.meta.get("retry_after_ms", 100) / 1e3)
                continue
            if reply.type is MessageType.ERROR:
                raise BridgeError(reply.meta)
            return reply.meta
        raise BridgeError({"code": ErrorCode.BUSY.value, "message": f"still busy after {busy_retries} tries"})

    def screen_raw(self, request_id: str, frame: bytes | memoryview, *, width: int, height: int,
                   pixel_format: str = "rgb8", stride: int | None = None, by_fd: bool | None = None,
                   **meta: Any) -> dict[str, Any]:
        """SCREEN one raw frame (protocol 1.1): ``height`` rows of ``stride`` bytes (default: no
        padding) of ``pixel_format`` pixels (``edge_retina.preprocess.raw.PIXEL_FORMATS``).

        ``by_fd``: pass the frame in a sealed memfd instead of the frame's body (protocol 1.2, see
        :meth:`screen_memfd`); None (the default) does when this connection's HELLO offered it."""
        if by_fd is None:
            by_fd = self.offers_fd_bodies
        if not by_fd:
            return self.screen(request_id, frame, image_format="raw", **raw_layout(pixel_format, width, height, stride),
                               **meta)
        memfd = sealed_memfd(frame)
        try:
            return self.screen_memfd(request_id, memfd, width=width, height=height, pixel_format=pixel_format,
                                     stride=stride, **meta)
        finally:
            os.close(memfd)

    def screen_memfd(self, request_id: str, memfd: int, *, width: int, height: int, pixel_format: str = "rgb8",
                     stride: int | None = None, **meta: Any) -> dict[str, Any]:
        """SCREEN the raw frame held by ``memfd`` (protocol 1.2, Unix sockets: a memfd sealed as
        :func:`sealed_memfd` seals it), passed with the SCREEN instead of in it: the server maps it,
        nothing travels through the socket but the metadata. ``memfd`` stays the caller's."""
        return self.screen(request_id, b"", image_format="raw", fds=(memfd,), body=FD_BODY,
                           **raw_layout(pixel_format, width, height, stride), **meta)


def raw_layout(pixel_format: str, width: int, height: int, stride: int | None) -> dict[str, Any]:
    """A raw frame's SCREEN fields (protocol 1.1); no stride: rows without padding."""
    return {"pixel_format": pixel_format, "width": width, "height": height,
            **({} if stride is None else {"stride": stride})}
