"""Replay issue 14's attack set on screen, the bridge, bundles and the hot folder; count the outcomes.

    .venv/bin/python benchmarks/bench_reliability.py --json bench_reliability.json [--bundle B]

Every case runs the real commands (``edge-retina screen``, ``bridge serve``, ``bridge hotfolder``
in child processes, with a timeout each) or the device API, and is counted as:

- **crash**: a traceback, an exit status other than the documented ones, or a server that dies;
- **hang**: a child that does not finish within its timeout, or a server that stops answering;
- **lost**: an argument without its result row, a bridge request without exactly one reply, a
  capture without its sidecar;
- **wrong**: an outcome other than the expected one (a damaged photo that gets scores, a hostile
  bundle that is accepted, an ERROR code other than the documented one).

It also measures the bridge server's peak RSS under 16 connections x 16 MiB frames x 4 rounds
against the bound docs/PROTOCOL.md states, and the decode-time cost of the strict JPEG decoder
(simplejpeg, strict) against OpenCV's lenient one, interleaved on camera JPEGs.

Without ``--bundle`` it screens with the tests' tiny random bundle (built here, needs the host
extras): the figures are about robustness, not about the model.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from edge_retina.bench.machine import machine_info  # noqa: E402
from edge_retina.bundle import load_bundle, pack_bundle, verify_bundle  # noqa: E402
from edge_retina.bundle.signing import (  # noqa: E402
    TrustedKeys,
    generate_key_pair,
    load_private_key,
    sign_bundle,
)
from edge_retina.errors import EdgeRetinaError  # noqa: E402
from edge_retina.install import install_bundle  # noqa: E402
from edge_retina.preprocess.decode import _decode_jpeg  # noqa: E402 -- the runtime's strict JPEG decode
from edge_retina.screener import Screener  # noqa: E402
from hostile_archives import SPARSE_4GIB, append_members  # noqa: E402 -- tests/
from firmware_bridge.protocol import (  # noqa: E402
    DEFAULT_MAX_PAYLOAD,
    FrameParser,
    Message,
    MessageType,
    encode_frame,
    encode_message,
)

MIB = 2**20
STATUS = encode_message(Message(MessageType.STATUS))
CLI = [sys.executable, "-m", "edge_retina"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


class Tally:
    """Cases tried and how each went wrong, per area."""

    def __init__(self) -> None:
        self.areas: dict[str, dict] = {}

    def case(self, area: str, name: str, *, crash=False, hang=False, lost=0, wrong=False, detail=None) -> None:
        row = self.areas.setdefault(area, {"cases": 0, "crashes": 0, "hangs": 0, "lost": 0, "wrong": 0, "failed": []})
        row["cases"] += 1
        row["crashes"] += bool(crash)
        row["hangs"] += bool(hang)
        row["lost"] += lost
        row["wrong"] += bool(wrong)
        if crash or hang or lost or wrong:
            row["failed"].append({"case": name, "detail": detail})


def run_child(args: list[str], timeout: float) -> tuple[int | None, str, float]:
    """(exit status or None on timeout, stderr, peak RSS in MiB) of a child process."""
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, env=ENV)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                child.returncode = os.waitstatus_to_exitcode(status)
                err.seek(0)
                return child.returncode, err.read().decode(errors="replace"), usage.ru_maxrss / 1024
            time.sleep(0.05)
        child.kill()
        child.wait()
        err.seek(0)
        return None, err.read().decode(errors="replace"), 0.0


# -- screening -------------------------------------------------------------------------------------

def _jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def _scan_start(jpeg: bytes) -> int:
    sos = jpeg.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], "big")


def screen_attack_set(folder: Path, photo: np.ndarray) -> dict[str, str | None]:
    """Write the hostile inputs; returns {argument: expected error_code or None (to be screened)}."""
    cases: dict[str, str | None] = {}
    jpeg = _jpeg(photo)

    def put(name: str, data: bytes, expected: str | None) -> None:
        (folder / name).write_bytes(data)
        cases[str(folder / name)] = expected

    for ext in (".jpg", ".png", ".bmp", ".tif", ".webp"):
        encoded = cv2.imencode(ext, cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))[1].tobytes()
        put(f"photo{ext}", encoded, None)
        put(f"cut-half{ext}", encoded[: len(encoded) // 2], "corrupt")
    rng = np.random.default_rng(14)
    scan = _scan_start(jpeg)
    for i, offset in enumerate((0.3, 0.5, 0.7)):
        damaged = bytearray(jpeg)
        start = scan + int(offset * (len(jpeg) - scan - 20_000))
        damaged[start:start + 20_000] = rng.integers(0, 255, 20_000, np.uint8).tobytes()
        put(f"random-scan-{i}.jpg", bytes(damaged), "corrupt")
    for fraction in (0.25, 0.5, 0.75):
        put(f"cut-{int(fraction * 100)}-with-eoi.jpg", jpeg[: scan + int(fraction * (len(jpeg) - scan))] + b"\xff\xd9",
            "corrupt")
    put("empty.jpg", b"", "empty_file")
    put("notes.jpg", b"not an image at all\n" * 10, "not_an_image")
    put("random.png", rng.integers(0, 255, 5000, np.uint8).tobytes(), "not_an_image")
    put("tiny.png", cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes(), "too_small")
    bomb = bytearray(cv2.imencode(".png", np.zeros((64, 64), np.uint8))[1].tobytes())
    bomb[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR claims 100k x 100k pixels
    bomb[29:33] = zlib.crc32(bytes(bomb[12:29])).to_bytes(4, "big")
    put("bomb.png", bytes(bomb), "too_large")
    put("uniform.png", cv2.imencode(".png", np.full((512, 512, 3), 128, np.uint8))[1].tobytes(), None)
    put("noise.png", cv2.imencode(".png", rng.integers(0, 255, (512, 512, 3), np.uint8))[1].tobytes(), None)
    gif = io.BytesIO()
    from PIL import Image

    Image.fromarray(photo).save(gif, "GIF")
    put("photo.gif", gif.getvalue(), "unsupported")
    with open(folder / "sparse-2GiB.jpg", "wb") as fh:
        fh.write(jpeg[:4])
        fh.truncate(2 * 1024**3)
    cases[str(folder / "sparse-2GiB.jpg")] = "too_large"
    os.mkfifo(folder / "fifo.jpg")
    cases[str(folder / "fifo.jpg")] = "not_a_file"
    (folder / "loop.jpg").symlink_to("loop.jpg")
    cases[str(folder / "loop.jpg")] = "not_found"
    (folder / "dangling.jpg").symlink_to("gone.jpg")
    cases[str(folder / "dangling.jpg")] = "not_found"
    latin1 = folder / os.fsdecode(b"caf\xe9.jpg")
    latin1.write_bytes(jpeg)
    cases[str(latin1)] = None
    (folder / "no-images").mkdir()
    cases[str(folder / "no-images")] = "no_images"
    cases[str(folder / "nothing-*.jpg")] = "no_match"
    cases[str(folder / "missing.jpg")] = "not_found"
    return cases


def attack_screen(bundle: Path, work: Path, photo: np.ndarray, tally: Tally) -> dict:
    folder = work / "screen"
    folder.mkdir()
    cases = screen_attack_set(folder, photo)
    arguments = list(cases)
    out = work / "screen.csv"
    batch_status, stderr, peak = run_child([*CLI, "screen", *arguments, "--bundle", str(bundle), "--out", str(out)],
                                           600)
    crash = batch_status not in (0, 1) or "Traceback" in stderr
    rows = {}
    if out.exists():
        import csv

        with open(out, encoding="utf-8") as fh:
            rows = {r["source"]: r for r in csv.DictReader(fh)}
    shown = {a.encode("utf-8", "backslashreplace").decode(): a for a in arguments}
    for shown_name, argument in shown.items():
        row = rows.get(shown_name)
        expected = cases[argument]
        if row is None:
            tally.case("screen", Path(argument).name, crash=crash, hang=batch_status is None, lost=1, detail="no row")
            continue
        code = row["error_code"] or None
        wrong = (code is not None) if expected is None else (code not in expected.split("|"))
        tally.case("screen", Path(argument).name, crash=crash, hang=batch_status is None, wrong=wrong,
                   detail=f"expected {expected}, got {code or row['status']}")
    damaged_scored = sum(1 for a, e in cases.items() if e == "corrupt" and rows.get(a, {}).get("p_glaucoma"))
    # Bad --out: a message and exit 2, before anything is screened.
    photo_path = str(folder / "photo.jpg")
    (work / "a-file").write_text("x")
    for bad_out in ("results.txt", str(work / "a-file" / "r.csv")):
        status, stderr, _ = run_child([*CLI, "screen", photo_path, "--bundle", str(bundle), "--out", bad_out], 300)
        tally.case("screen", f"--out {bad_out}", crash="Traceback" in stderr, hang=status is None,
                   wrong=status != 2, detail=f"exit {status}")
    # The Screener API: bad sources are results, never exceptions.
    with Screener.from_bundle(bundle) as screener:
        for source in (None, 42, ["a.jpg"], "nul\0byte.jpg", b"", bytearray(b"junk"), np.zeros((3, 3), np.float64)):
            try:
                result = screener.screen(source)
                tally.case("screen-api", repr(source)[:20], wrong=result.error is None)
            except Exception as exc:  # noqa: BLE001 -- counted
                tally.case("screen-api", repr(source)[:20], crash=True, detail=repr(exc))
    return {"arguments": len(arguments), "rows": len(rows), "exit_status": batch_status, "peak_rss_mib": round(peak, 1),
            "damaged_photos_scored": damaged_scored}


# -- the bridge ------------------------------------------------------------------------------------

class Server:
    """``edge-retina bridge serve`` on a Unix socket, in a child process."""

    def __init__(self, bundle: Path, work: Path, name: str, *extra: str):
        self.sock = work / f"{name}.sock"
        args = [*CLI, "bridge", "serve", "--bundle", str(bundle), "--store", str(work / f"{name}.sqlite3"),
                "--socket", str(self.sock), *extra]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
        line = self.process.stdout.readline()
        if not line.startswith("listening on"):
            raise RuntimeError(f"server did not start: {line!r}")
        self.ps = psutil.Process(self.process.pid)

    def connect(self, timeout: float = 30.0) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(self.sock))
        sock.settimeout(timeout)
        return sock

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int | None:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return None


def replies(sock: socket.socket, count: int, timeout: float = 30.0) -> tuple[list[Message], bool]:
    """Up to ``count`` replies: (replies, whether the server closed the connection)."""
    parser, got = FrameParser(max_payload=1 << 26), []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(1 << 16)
        except (socket.timeout, ConnectionResetError):
            chunk = None
        if not chunk:
            return got, chunk == b""
        parser.feed(chunk)
        while (message := parser.next()) is not None:
            got.append(message)
    return got, False


def _screen_frame(meta: dict, body: bytes) -> bytes:
    return encode_message(Message(MessageType.SCREEN, {"request_id": "attack", "format": "jpeg", **meta}, body))


def attack_bridge(bundle: Path, work: Path, photo_jpeg: bytes, tally: Tally) -> dict:
    server = Server(bundle, work, "bridge")
    nested = b"[" * 30_000 + b"]" * 30_000
    hostile = {
        "nested-metadata": (encode_frame(MessageType.HELLO, len(nested).to_bytes(4, "big") + nested), "malformed"),
        "captured_at-inf": (_screen_frame({"captured_at": "inf"}, photo_jpeg), "bad_request"),
        "captured_at-1e400": (_screen_frame({"captured_at": "1e400"}, photo_jpeg), "bad_request"),
        "shape-of-booleans": (_screen_frame({"format": "raw", "shape": [True, True, True]}, b"\x01"), "bad_request"),
        "shape-of-floats": (_screen_frame({"format": "raw", "shape": [1.0, 1.0]}, b"\x01"), "bad_request"),
        "metadata-not-object": (encode_frame(MessageType.SCREEN, b"\0\0\0\x02[]"), "malformed"),
    }
    for name, (frame, code) in hostile.items():
        with server.connect() as sock:
            sock.sendall(frame + STATUS)
            got, closed = replies(sock, 2)
        codes = [m.meta.get("code") for m in got]
        tally.case("bridge", name, crash=not server.alive, hang=len(got) < 2 and not closed, lost=2 - len(got),
                   wrong=codes != [code, None], detail=codes)

    # Junk: how many bytes of ERROR one connection's junk turns into.
    junk = (b"ER" + bytes(10)) * (64 * 1024 // 12)
    with server.connect() as sock:
        try:
            sock.sendall(junk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        got, closed = replies(sock, 10_000, timeout=10)
    error_bytes = sum(len(encode_message(m)) for m in got)
    tally.case("bridge", "64-KiB-junk", crash=not server.alive, wrong=error_bytes > len(junk), detail=error_bytes)

    # Idle connections: 16 silent peers must not lock a camera out for long.
    silent = [server.connect() for _ in range(16)]
    start = time.monotonic()
    served_after = None
    while time.monotonic() - start < 60 and served_after is None:
        try:
            with server.connect(timeout=5) as sock:
                sock.sendall(STATUS)
                got, _ = replies(sock, 1, timeout=5)
                if got and got[0].type is MessageType.STATUS:
                    served_after = time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.2)
    for sock in silent:
        sock.close()
    tally.case("bridge", "16-idle-connections", hang=served_after is None, detail=served_after)
    alive = server.alive
    tally.case("bridge", "server-survived", crash=not alive or server.stop() not in (0, -signal.SIGTERM))
    return {"junk_bytes": len(junk), "error_reply_bytes": error_bytes,
            "amplification": round(error_bytes / len(junk), 4),
            "idle_lockout_s": None if served_after is None else round(served_after, 1)}


def attack_bridge_memory(bundle: Path, work: Path, tally: Tally, connections=16, rounds=4) -> dict:
    """Every connection sends a frame of the largest size at once, ``rounds`` times; server RSS sampled."""
    server = Server(bundle, work, "memory")
    time.sleep(1.0)
    base = server.ps.memory_info().rss
    samples = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append(server.ps.memory_info().rss)
            time.sleep(0.01)

    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    body = bytes(DEFAULT_MAX_PAYLOAD - 1024)

    def camera(c: int, round_: int):
        frame = encode_message(Message(MessageType.SCREEN, {"request_id": f"m{round_}-{c}", "format": "jpeg"}, body))
        try:
            with server.connect(timeout=120) as sock:
                sock.sendall(frame)
                got, _ = replies(sock, 1, timeout=120)
            kind = got[0].meta.get("code") or got[0].type.name if got else "no reply"
        except OSError as exc:  # a frame refused from its header: the server may close before all is sent
            kind = f"socket: {type(exc).__name__}"
        with lock:
            outcomes[kind] = outcomes.get(kind, 0) + 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    for round_ in range(rounds):
        threads = [threading.Thread(target=camera, args=(c, round_)) for c in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    done.set()
    sampler.join()
    alive = server.alive
    server.stop()
    peak = max(samples)
    # docs/PROTOCOL.md: base + 2 x in-flight budget (4 x max frame) + (queue + 1) x max frame.
    bound = base + 2 * 4 * DEFAULT_MAX_PAYLOAD + (8 + 1) * DEFAULT_MAX_PAYLOAD
    lost = outcomes.get("no reply", 0)
    tally.case("bridge", "16x16MiB-x4-memory", crash=not alive, lost=lost, wrong=peak > bound,
               detail={"peak_mib": round(peak / MIB), "bound_mib": round(bound / MIB)})
    return {"connections": connections, "rounds": rounds, "frame_mib": DEFAULT_MAX_PAYLOAD / MIB,
            "replies": dict(sorted(outcomes.items())), "base_rss_mib": round(base / MIB, 1),
            "peak_rss_mib": round(peak / MIB, 1), "documented_bound_mib": round(bound / MIB, 1)}


# -- bundles ---------------------------------------------------------------------------------------

def _bytes_under(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) if path.exists() else 0


def attack_bundles(bundle: Path, work: Path, photo_path: Path, tally: Tally) -> dict:
    root = work / "bundles"
    root.mkdir()
    generate_key_pair(root / "k.key", root / "trusted" / "k.pub")
    trusted = TrustedKeys.from_directory(root / "trusted")
    directory = shutil.copytree(load_bundle(bundle).root, root / "signed")
    (directory / "manifest.sig").unlink(missing_ok=True)
    sign_bundle(directory, load_private_key(root / "k.key"))
    archive = pack_bundle(directory, root / "signed.erb.tar")
    archives = {
        "unlisted-engines/extra.so": append_members(archive, root / "extra.erb.tar", {"engines/extra.so": b"\x7fELF"}),
        "20000-junk-members": append_members(archive, root / "junk.erb.tar",
                                              {f"junk/{i}.bin": b"x" for i in range(20_000)}),
        "sparse-4GiB-member": append_members(archive, root / "bomb.erb.tar", {"bomb.bin": bytes(512)},
                                              {"bomb.bin": SPARSE_4GIB}),
    }
    written = {}
    for name, hostile in archives.items():
        verified = verify_bundle(hostile).ok
        slots, cache = root / f"root-{len(written)}", root / f"cache-{len(written)}"
        refused = []
        for attempt in (lambda: install_bundle(slots, hostile, trusted), lambda: load_bundle(hostile, cache_dir=cache)):
            try:
                attempt()
                refused.append(False)
            except EdgeRetinaError:
                refused.append(True)
        written[name] = _bytes_under(slots) + _bytes_under(cache)
        tally.case("bundles", name, wrong=verified or not all(refused), detail={"written_bytes": written[name]})
    # A symlinked signature: refused by install as by verify.
    linked = shutil.copytree(directory, root / "linked")
    shutil.move(linked / "manifest.sig", root / "elsewhere.sig")
    (linked / "manifest.sig").symlink_to(root / "elsewhere.sig")
    try:
        install_bundle(root / "root-linked", linked, trusted)
        tally.case("bundles", "symlinked-manifest.sig", wrong=True)
    except EdgeRetinaError:
        tally.case("bundles", "symlinked-manifest.sig")
    # Corrupt content whose hash was updated in an unsigned manifest: `screen` refuses the bundle (exit 2).
    for name, content in (("bad-zip-prompts", b"PK\x03\x04 broken"), ("junk-prompts", bytes(64))):
        edited = shutil.copytree(directory, root / name)
        (edited / "manifest.sig").unlink()
        manifest = json.loads((edited / "manifest.json").read_text())
        (edited / manifest["prompts"]["file"]).write_bytes(content)
        manifest["files"][manifest["prompts"]["file"]] = hashlib.sha256(content).hexdigest()
        (edited / "manifest.json").write_text(json.dumps(manifest))
        status, stderr, _ = run_child([*CLI, "screen", str(photo_path), "--bundle", str(edited)], 300)
        tally.case("bundles", name, crash="Traceback" in stderr, hang=status is None, wrong=status != 2,
                   detail=f"exit {status}")
    return {"bytes_written_for_refused_archives": written}


# -- the hot folder --------------------------------------------------------------------------------

def attack_hotfolder(bundle: Path, work: Path, photo: np.ndarray, tally: Tally) -> dict:
    folder = work / "hot"
    (folder / "day2").mkdir(parents=True)
    jpeg = _jpeg(photo)
    (folder / "a.jpg").write_bytes(jpeg)
    (folder / "day2" / "a-copy.jpg").write_bytes(jpeg)
    os.mkfifo(folder / "b.jpg")
    (folder / "x.jpg").symlink_to("x.jpg")
    (folder / "c.jpg").write_bytes(_jpeg(photo, 80))
    (folder / "d.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # a writer that paused
    once = [*CLI, "bridge", "hotfolder", str(folder), "--bundle", str(bundle), "--once", "--settle", "0"]
    status, stderr, _ = run_child(once, 300)
    tally.case("hotfolder", "fifo+loop+duplicate+partial", crash="Traceback" in stderr or status not in (0, None),
               hang=status is None, detail=f"exit {status}")
    captures = ["a.jpg", "day2/a-copy.jpg", "c.jpg", "d.jpg"]
    for name in captures:
        sidecar = folder / f"{name}.result.json"
        if not sidecar.exists():
            tally.case("hotfolder", name, lost=1, detail="no sidecar")
            continue
        record = json.loads(sidecar.read_text())
        tally.case("hotfolder", name, wrong=record["meta"]["path"] != name, detail=record["meta"]["path"])
    with open(folder / "d.jpg", "ab") as rest:
        rest.write(jpeg[len(jpeg) // 2:])
    status, stderr, _ = run_child(once, 300)
    record = json.loads((folder / "d.jpg.result.json").read_text())
    tally.case("hotfolder", "partial-then-complete", hang=status is None,
               wrong=record["result"]["status"] == "error", detail=record["result"]["status"])
    return {"captures": len(captures)}


# -- decode cost -----------------------------------------------------------------------------------

def decode_cost(images: list[Path], rounds: int) -> dict:
    """The runtime's strict JPEG decode (simplejpeg) vs OpenCV's lenient one, full size, interleaved."""
    datas = [p.read_bytes() for p in images]
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    strict, lenient = [], []
    for _ in range(rounds):
        for data in datas:
            t0 = time.perf_counter()
            _decode_jpeg(data, "bench", 1)
            t1 = time.perf_counter()
            cv2.imdecode(np.frombuffer(data, np.uint8), flags)
            t2 = time.perf_counter()
            strict.append(t1 - t0)
            lenient.append(t2 - t1)
    ratios = [s / lenient_ for s, lenient_ in zip(strict, lenient)]
    return {"images": [str(p) for p in images], "rounds": rounds,
            "strict_simplejpeg_median_ms": round(statistics.median(strict) * 1e3, 2),
            "opencv_imdecode_median_ms": round(statistics.median(lenient) * 1e3, 2),
            "median_ratio": round(statistics.median(ratios), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--decode-rounds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from skimage.data import retina

    photo = cv2.resize(retina(), (768, 768), interpolation=cv2.INTER_AREA)
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
        work = Path(tmp)
        bundle = args.bundle
        if bundle is None:
            from tiny_bundle import build_tiny_bundle

            bundle = build_tiny_bundle(work / "tiny-bundle")
        report: dict = {"machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "bundle": "tiny random (tests/tiny_bundle.py)" if args.bundle is None else str(args.bundle)}
        report["screen"] = attack_screen(bundle, work, photo, tally)
        report["bridge"] = attack_bridge(bundle, work, _jpeg(photo), tally)
        report["bridge_memory"] = attack_bridge_memory(bundle, work, tally)
        (work / "photo.jpg").write_bytes(_jpeg(photo))
        report["bundles"] = attack_bundles(bundle, work, work / "photo.jpg", tally)
        report["hotfolder"] = attack_hotfolder(bundle, work, photo, tally)
    camera = sorted(glob.glob(str(args.datasets / "heimed" / "full" / "*.jpg")))
    if camera:
        report["decode_cost"] = decode_cost([Path(p) for p in camera], args.decode_rounds)
    report["tally"] = tally.areas
    counts = ("cases", "crashes", "hangs", "lost", "wrong")
    report["totals"] = {k: sum(area[k] for area in tally.areas.values()) for k in counts}
    report["machine"]["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
