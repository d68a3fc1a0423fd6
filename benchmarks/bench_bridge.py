"""Firmware bridge under load and under faults: requests held, faults survived, frames fuzzed.

    .venv/bin/python benchmarks/bench_bridge.py --json bench_bridge.json [--bundle B]

Runs the real ``edge-retina bridge serve`` in a child process (Unix socket) and measures:

- **load**: N concurrent camera connections x M SCREEN requests each (default 8 x 500) against a
  small queue (``--queue 4``, so BUSY backpressure is exercised); every request must come back with
  its result and be held in the store exactly once; the server's RSS is sampled throughout.
- **faults**: K rounds of kill -9 of the server while cameras stream, restart, cameras retry
  everything: no request lost (every id stored, done), none repeated (results received before a kill
  come back identical, with the same completion time).
- **fuzz**: F damaged frames (bit flips, truncations, lying lengths with a valid header CRC, unknown
  versions and types, garbage) on one connection; after each, the same connection must still answer
  STATUS.

Without ``--bundle`` it screens with the tests' tiny random bundle (built here, needs the host
extras): the figures are about the bridge (framing, queue, store), not about the model.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from edge_retina.bench.machine import machine_info  # noqa: E402
from firmware_bridge.client import BridgeClient, BridgeError  # noqa: E402
from firmware_bridge.protocol import (  # noqa: E402
    HEADER,
    HEADER_SIZE,
    FrameParser,
    Message,
    MessageType,
    crc32,
    encode_frame,
    encode_message,
    encode_payload,
)
from firmware_bridge.store import ResultStore  # noqa: E402


class Server:
    def __init__(self, bundle: Path, store: Path, sock: Path, *extra: str):
        code = "import sys; from firmware_bridge.cli import bridge; bridge(sys.argv[1:])"
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, "serve", "--bundle", str(bundle), "--store", str(store),
             "--socket", str(sock), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        line = self.process.stdout.readline()
        if not line.startswith("listening on"):
            raise RuntimeError(f"server did not start: {line!r}")
        self.sock = sock
        self.ps = psutil.Process(self.process.pid)

    def client(self) -> BridgeClient:
        return BridgeClient.unix(str(self.sock), timeout=120)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def camera_images(count: int) -> list[bytes]:
    from skimage.data import retina

    rgb = cv2.cvtColor(retina(), cv2.COLOR_RGB2BGR)
    images = []
    for i in range(count):
        side = 128 + 8 * i
        images.append(cv2.imencode(".jpg", cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA))[1].tobytes())
    return images


def load_test(bundle: Path, work: Path, clients: int, per_client: int, queue: int) -> dict:
    store_path = work / "load.sqlite3"
    server = Server(bundle, store_path, work / "load.sock", "--queue", str(queue))
    images = camera_images(8)
    rss, latencies, busy, failures = [], [], [0], []
    done = threading.Event()

    def sample():
        while not done.is_set():
            rss.append(server.ps.memory_info().rss)
            time.sleep(0.05)

    def camera(c: int):
        try:
            with server.client() as client:
                for i in range(per_client):
                    message = Message(MessageType.SCREEN, {"request_id": f"c{c}-{i}", "format": "jpeg"},
                                      images[(c + i) % len(images)])
                    start = time.perf_counter()
                    while (reply := client.request(message)).meta.get("code") == "busy":
                        busy[0] += 1
                        time.sleep(reply.meta["retry_after_ms"] / 1e3)
                    latencies.append(time.perf_counter() - start)
                    if reply.type is not MessageType.RESULT or reply.meta["request_id"] != f"c{c}-{i}":
                        failures.append(reply.meta)
        except Exception as exc:  # counted as a failure in the report
            failures.append(repr(exc))

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    threads = [threading.Thread(target=camera, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    server.stop()
    store = ResultStore(store_path)
    counts = store.counts()
    store.close()
    mib = 2**20
    return {
        "clients": clients, "requests_per_client": per_client, "queue_capacity": queue,
        "requests": clients * per_client, "held": counts["done"], "pending_left": counts["pending"],
        "failures": len(failures), "busy_replies": busy[0],
        "throughput_per_s": round(clients * per_client / wall, 1), "wall_s": round(wall, 1),
        "latency_ms": {"p50": round(statistics.median(latencies) * 1e3, 1),
                       "p99": round(statistics.quantiles(latencies, n=100)[98] * 1e3, 1)},
        "server_rss_mib": {"first": round(rss[0] / mib, 1), "peak": round(max(rss) / mib, 1),
                           "last": round(rss[-1] / mib, 1)},
    }


def fault_test(bundle: Path, work: Path, rounds: int, clients: int, per_client: int, seed: int) -> dict:
    rng = random.Random(seed)
    store_path, sock = work / "faults.sqlite3", work / "faults.sock"
    images = camera_images(8)
    received: dict[str, dict] = {}
    mismatches = []
    lock = threading.Lock()

    def camera(server: Server, c: int):
        try:
            with server.client() as client:
                for i in range(per_client):
                    rid = f"f{c}-{i}"
                    reply = client.screen(rid, images[(c + i) % len(images)], busy_retries=10_000)
                    with lock:
                        first = received.setdefault(rid, reply)
                        if (first["completed_at"], first["result"]) != (reply["completed_at"], reply["result"]):
                            mismatches.append(rid)
        except (ConnectionError, OSError, BridgeError):
            pass  # the server was killed under this camera: it retries after the restart

    kills = accepted_unfinished = 0
    for round_ in range(rounds + 1):
        server = Server(bundle, store_path, sock)
        threads = [threading.Thread(target=camera, args=(server, c)) for c in range(clients)]
        for t in threads:
            t.start()
        if round_ < rounds:
            time.sleep(rng.uniform(0.5, 2.0))
            server.kill()
            kills += 1
            for t in threads:
                t.join()
            store = ResultStore(store_path)
            accepted_unfinished += store.counts()["pending"]  # the restart must finish these
            store.close()
        else:
            for t in threads:
                t.join()
            server.stop()
    store = ResultStore(store_path)
    counts = store.counts()
    store.close()
    expected = clients * per_client
    return {"kill_9_restarts": kills, "accepted_unfinished_at_kills": accepted_unfinished, "requests": expected, "results_received": len(received),
            "held": counts["done"], "pending_left": counts["pending"], "repeated_or_changed": len(mismatches),
            "lost": expected - counts["done"]}


def fuzz_frames(rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    good = encode_message(Message(MessageType.SCREEN, {"request_id": "fz", "format": "jpeg"}, bytes(range(256)) * 4))
    cases = []
    for _ in range(count):
        kind = rng.choice(["flip", "flip", "truncate", "garbage", "version", "type", "lying_length", "metadata"])
        if kind == "flip":
            frame = bytearray(good)
            for _ in range(rng.randint(1, 8)):
                frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
            data = bytes(frame)
        elif kind == "truncate":
            data = good[: rng.randrange(1, len(good))]
        elif kind == "garbage":
            data = rng.randbytes(rng.randint(1, 2000))
        elif kind == "version":
            data = encode_frame(MessageType.STATUS, encode_payload({}), version=rng.randint(2, 255))
        elif kind == "type":
            data = encode_frame(rng.choice([0, 6, 0x10, 0x7E, 0x80, 0xFF]), encode_payload({}))
        elif kind == "metadata":
            body = rng.randbytes(rng.randint(0, 64))
            data = encode_frame(MessageType.SCREEN, len(body).to_bytes(4, "big") + body)
        else:  # a valid header CRC over a length that is not the real one
            length = rng.choice([0, 1, 3, rng.randint(4, 5000), 2**31])
            header = HEADER.pack(b"ER", 1, MessageType.SCREEN, length)
            data = header + crc32(header).to_bytes(4, "big") + good[HEADER_SIZE:]
        cases.append((kind, data))
    return cases


def fuzz_test(bundle: Path, work: Path, frames: int, seed: int) -> dict:
    server = Server(bundle, work / "fuzz.sqlite3", work / "fuzz.sock", "--frame-timeout", "0.2", "--max-frame-mb", "1")
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(work / "fuzz.sock"))
    sock.settimeout(0.3)
    parser = FrameParser()
    status = encode_message(Message(MessageType.STATUS))
    errors: dict[str, int] = {}
    answered = 0
    for kind, data in fuzz_frames(random.Random(seed), frames):
        sock.sendall(data)
        deadline = time.monotonic() + 30
        got_status = False
        while not got_status:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no STATUS after a {kind} frame: the server stopped answering")
            sock.sendall(status)
            try:
                while not got_status:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise RuntimeError(f"the server closed the connection after a {kind} frame")
                    parser.feed(chunk)
                    while (reply := parser.next()) is not None:
                        if reply.type is MessageType.ERROR:
                            errors[reply.meta["code"]] = errors.get(reply.meta["code"], 0) + 1
                        got_status = got_status or reply.type is MessageType.STATUS
            except socket.timeout:
                continue
        answered += 1
    sock.close()
    alive = server.process.poll() is None
    server.stop()
    return {"frames_fuzzed": frames, "status_answered_after": answered, "server_alive": alive,
            "error_replies": dict(sorted(errors.items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=500, help="per client")
    parser.add_argument("--queue", type=int, default=4)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--fuzz", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp:
        work = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            from tiny_bundle import build_tiny_bundle

            bundle = build_tiny_bundle(work / "bundle")
        report = {
            "machine": machine_info(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "bundle": "tiny random (tests/tiny_bundle.py)" if args.bundle is None else str(args.bundle),
            "load": load_test(bundle, work, args.clients, args.requests, args.queue),
            "faults": fault_test(bundle, work, args.kills, 4, 40, args.seed),
            "fuzz": fuzz_test(bundle, work, args.fuzz, args.seed),
        }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
