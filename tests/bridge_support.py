"""Helpers shared by the firmware-bridge tests: small camera images, in-process and subprocess servers."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from firmware_bridge.server import BridgeConfig, BridgeServer
from firmware_bridge.store import ResultStore
from firmware_bridge.transports import tcp_listener, unix_listener

REPO = Path(__file__).resolve().parents[1]


def small_jpeg(retina_rgb: np.ndarray, side: int = 128, quality: int = 90) -> bytes:
    """A small real fundus JPEG: keeps screening in the tests to a few milliseconds."""
    small = cv2.resize(retina_rgb, (side, side), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def camera_frame(retina_rgb: np.ndarray) -> np.ndarray:
    """The real photograph on a 640x480 RGB8 frame (a camera sensor's 4:3 shape), as a camera holds it."""
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, 80:560] = cv2.resize(retina_rgb, (480, 480), interpolation=cv2.INTER_AREA)
    return frame


@contextlib.contextmanager
def running_server(screener, store_path: Path, *, transport: str = "unix", **config) -> Iterator[tuple[BridgeServer, str]]:
    """A BridgeServer in this process; yields it and its address ("unix:PATH" or "tcp:HOST:PORT")."""
    store = ResultStore(store_path)
    server = BridgeServer(screener, store, BridgeConfig(**config))
    if transport == "unix":
        # A short directory of its own: pytest's tmp_path can exceed the 107 bytes of a socket path.
        socket_dir = Path(tempfile.mkdtemp(prefix="erb-"))
        listener = unix_listener(socket_dir / "bridge.sock")
    else:
        listener = tcp_listener("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve, args=([listener],), daemon=True)
    thread.start()
    try:
        yield server, listener.address
    finally:
        server.close()
        thread.join(timeout=10)
        store.close()
        if transport == "unix":
            shutil.rmtree(socket_dir, ignore_errors=True)


def connect(address: str, **kwargs):
    from firmware_bridge.client import BridgeClient

    kind, _, where = address.partition(":")
    return BridgeClient.unix(where, **kwargs) if kind == "unix" else BridgeClient.tcp(where, **kwargs)


class ServerProcess:
    """``edge-retina bridge serve`` in a child process, for crash tests (kill -9) and the C client."""

    def __init__(self, bundle: Path, store: Path, *extra: str, transport: tuple[str, str] = ("--tcp", "127.0.0.1:0"),
                 repo: Path = REPO):
        """``repo``: the checkout whose server runs (another one: a benchmark's before/after)."""
        code = "import sys; from firmware_bridge.cli import bridge; bridge(sys.argv[1:])"
        args = [sys.executable, "-c", code, "serve", "--bundle", str(Path(bundle).resolve()), "--store", str(Path(store).resolve()),
                *transport, *extra]
        env = {**os.environ, "PYTHONPATH": str(repo)}
        # cwd too: ``python -c`` puts the working directory first on sys.path, before PYTHONPATH.
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                        cwd=repo)
        self.address = self._wait_listening()

    def _wait_listening(self, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited with {self.process.wait()} before listening")
            match = re.match(r"listening on (\S+)", line)
            if match:
                return match.group(1)
        raise RuntimeError("server did not start listening")

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no clean-up runs
        self.process.wait()

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=30)
