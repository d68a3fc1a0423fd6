"""A Python client of the bridge: for host-side tools, the tests and the benchmark.

(Camera firmware embeds the C client in ``firmware_bridge/c_client/``, which speaks the same frames.)
"""
from __future__ import annotations

import socket
import time
from typing import Any

from .protocol import ErrorCode, FrameParser, Message, MessageType, frame_writes
from .transports import parse_tcp_address


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

    def request(self, message: Message) -> Message:
        """Send one message and return the reply (an ERROR reply is returned, not raised)."""
        self.send(message)
        return self.receive()

    def send(self, message: Message) -> None:
        """Write one message's frame (without copying its body)."""
        for write in frame_writes(message):
            self._send_all(write)

    def _send_all(self, parts: list[bytes | memoryview]) -> None:
        """One gathering write of ``parts``, resumed where the socket stopped taking bytes."""
        views = [memoryview(part) for part in parts]
        while views:
            sent = self.sock.sendmsg(views)
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
        return self.call(Message(MessageType.HELLO, {"versions": list(versions), "client": "edge-retina-python"}))

    def status(self) -> dict[str, Any]:
        return self.call(Message(MessageType.STATUS))

    def selftest(self) -> dict[str, Any]:
        return self.call(Message(MessageType.SELFTEST))

    def screen(self, request_id: str, image: bytes | memoryview, *, image_format: str = "jpeg", busy_retries: int = 100,
               **meta: Any) -> dict[str, Any]:
        """SCREEN one image; on BUSY wait ``retry_after_ms`` and send it again (same request id)."""
        message = Message(MessageType.SCREEN, {"request_id": request_id, "format": image_format, **meta}, image)
        for _ in range(busy_retries):
            reply = self.request(message)
            if reply.type is MessageType.ERROR and reply.meta.get("code") == ErrorCode.BUSY.value:
                time.sleep(reply.meta.get("retry_after_ms", 100) / 1e3)
                continue
            if reply.type is MessageType.ERROR:
                raise BridgeError(reply.meta)
            return reply.meta
        raise BridgeError({"code": ErrorCode.BUSY.value, "message": f"still busy after {busy_retries} tries"})

    def screen_raw(self, request_id: str, frame: bytes | memoryview, *, width: int, height: int,
                   pixel_format: str = "rgb8", stride: int | None = None, **meta: Any) -> dict[str, Any]:
        """SCREEN one raw frame (protocol 1.1): ``height`` rows of ``stride`` bytes (default: no
        padding) of ``pixel_format`` pixels (``edge_retina.preprocess.raw.PIXEL_FORMATS``)."""
        layout = {"pixel_format": pixel_format, "width": width, "height": height,
                  **({} if stride is None else {"stride": stride})}
        return self.screen(request_id, frame, image_format="raw", **layout, **meta)
