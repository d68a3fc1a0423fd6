"""Throughput of screening: the pipeline against one photo at a time and the research-code way, raw
frames against JPEGs through the bridge, and peak memory on a large folder.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_throughput.py --bundle artifacts/demo/default-bundle \\
        --json bench_throughput.json

Inputs (made here from real photographs, nothing stored): the 8 HEI-MED camera originals
(../shared/datasets/heimed/full), each upscaled onto a 4000x3000 canvas at JPEG quality 95 as in
bench_preprocess.py ("12 MP camera JPEGs"); folders of hard links to them (distinct paths, no disk).

Measured, every variant interleaved round by round (rotating order) because the machine is shared:

- **screen**: ``edge-retina screen FOLDER --json --workers N --max-batch B`` in a fresh process per
  run, on a folder of ``--folder-size`` photos: its own throughput line (first photo to last result,
  start-up apart) for N = 1 and N = each of ``--workers`` with B = 1 (labelled without it), the
  latter also with B = 4 (``screen``'s default);
- **sequential**: one photo at a time (``Screener.screen`` in a loop, what ``screen`` did before the
  pipeline: decode, preprocessing and engine one after the other), in this process, on the same folder,
  in the same rounds (``--workers 1`` is not that: its one worker decodes the next photo while the
  engine runs);
- **research**: the research-code way (PIL full decode + the PyTorch FP32 teacher, one torch thread,
  as in "Latency and parity") on the 8 distinct photos, in this process, in the same rounds;
- **pipeline variants** (in this process): micro-batches (``max_batch``) and engine threads, to decide
  whether batching pays for this engine;
- **bridge**: one camera over a Unix socket, each photo sent as its 12 MP JPEG, as a 3 MP RGB8 raw
  frame (the same canvas resized to 2000x1500) in the SCREEN and by file descriptor (protocol 1.2:
  copied into a sealed memfd per request, timed; and already in one, as a camera capturing into a
  memfd has it, the memfd made before the timer), as the RGGB mosaic of that frame and as a 1000x750
  RGB8 frame (what a camera sending a smaller frame would send), in rotating order, fresh request
  ids; per-photo round trip (client send to RESULT), the server's screening time and the CPU time a
  request costs the server and the client; with ``--baseline-repo``, the server of that checkout
  too, in the same rotation (a before/after; by file descriptor only if its HELLO offers it);
- **bridge costs**: where a request's time goes, each part alone in this process, the 12 MP JPEG,
  the 3 MP RGB8 frame and that frame by file descriptor interleaved: the frame into a sealed memfd
  (by fd), frame transfer over a socket pair (client write to parsed message, CRCs checked; by fd,
  the descriptor taken and the memfd mapped), the image's sha256 (which the server computes beside
  the screening), journalling the image (pending row with the image, then its drop: what a request
  waiting longer than ``journal_after`` costs), committing a result without a journal row, and
  screening (decode to result);
- **memory**: peak RSS (VmHWM) of ``screen`` on ``--rss-photos`` photos.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import socket
import threading
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_preprocess import make_12mp_jpeg  # noqa: E402
from bridge_support import ServerProcess, connect  # noqa: E402

from edge_retina.bench.machine import machine_info  # noqa: E402
from edge_retina.preprocess.raw import RawFrame  # noqa: E402
from firmware_bridge.client import BridgeClient, sealed_memfd  # noqa: E402
from firmware_bridge.protocol import FrameParser, Message, MessageType  # noqa: E402
from firmware_bridge.server import sha256_hex  # noqa: E402
from firmware_bridge.store import ResultStore  # noqa: E402
from firmware_bridge.transports import UnixSocketStream, map_sealed_frame  # noqa: E402
from edge_retina.pipeline import ScreeningPipeline  # noqa: E402
from edge_retina.screener import Screener  # noqa: E402

DEFAULT_DATASETS = Path(os.environ.get("EDGE_RETINA_DATASETS", REPO.parent / "shared" / "datasets"))


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def rotated(variants: list, round_index: int) -> list:
    shift = round_index % len(variants)
    return variants[shift:] + variants[:shift]


def folder_of(work: Path, name: str, photos: list[Path], count: int) -> Path:
    folder = work / name
    folder.mkdir(exist_ok=True)
    for i in range(count):
        link = folder / f"IMG_{i:05d}.jpg"
        if not link.exists():
            os.link(photos[i % len(photos)], link)
    return folder


#: ``edge-retina screen`` that reports its peak RSS (VmHWM: this program's own high-water mark; a
#: child's ru_maxrss would include the parent's memory it was forked from) on stderr as it exits.
_SCREEN_REPORTING_PEAK_RSS = (
    "import atexit, sys\n"
    "from edge_retina.bench.cold_start import peak_rss_mb\n"
    "atexit.register(lambda: print(f'peak_rss_mb={peak_rss_mb()}', file=sys.stderr))\n"
    "from edge_retina.cli.main import cli\n"
    "cli(['screen', *sys.argv[1:]])\n"
)


def run_screen(bundle: Path, folder: Path, workers: int, max_batch: int) -> dict:
    """One ``screen`` process: its throughput summary and its peak RSS."""
    command = [sys.executable, "-c", _SCREEN_REPORTING_PEAK_RSS, str(folder), "--bundle", str(bundle), "--json",
               "--workers", str(workers), "--max-batch", str(max_batch)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise RuntimeError(f"screen exited with status {done.returncode}: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout)["summary"]
    peak = float(done.stderr.rsplit("peak_rss_mb=", 1)[1].split()[0])
    return {**summary["throughput"], "errors": summary["error"], "engine": summary["engine"]["backend"] + "/"
            + summary["engine"]["precision"], "peak_rss_mb": round(peak, 1)}


def research_throughput(research, photos: list[Path]) -> float:
    start = time.perf_counter()
    for photo in photos:
        research.run(photo)
    return len(photos) / (time.perf_counter() - start)


def pipeline_throughput(screener: Screener, photos: list[Path], workers: int, max_batch: int) -> tuple[float, float]:
    """Images/s, and this process's CPU ms per photo (every thread: decode, preprocessing, engine)."""
    cpu = time.process_time()
    with ScreeningPipeline(screener, workers=workers, max_batch=max_batch) as pipeline:
        for result in pipeline.screen(photos):
            assert result.error is None, result.error
        return pipeline.throughput.images_per_s, (time.process_time() - cpu) * 1e3 / len(photos)


def sequential_throughput(screener: Screener, images: list[Path]) -> float:
    start = time.perf_counter()
    for image in images:
        assert screener.screen(image).error is None
    return len(images) / (time.perf_counter() - start)


def bench_screen(args, bundle: Path, photos: list[Path], work: Path) -> dict:
    folder = folder_of(work, "folder", photos, args.folder_size)
    sequential = Screener.from_bundle(bundle)
    sequential.screen(photos[0])  # warm-up
    research = None
    if not args.skip_research:
        from edge_retina.bench.parity import bundle_prompt_table
        from converters.research_baseline import ResearchPipeline
        from edge_retina.bundle import load_bundle
        from converters.parity_references import bundle_teacher

        loaded = load_bundle(bundle)
        teacher = bundle_teacher(loaded.manifest, None)
        research = ResearchPipeline(teacher.image_encoder, teacher.input_spec, bundle_prompt_table(loaded), threads=1)
        research.run(photos[0])  # warm-up
    variants = [("screen --workers 1", 1, 1)] + [(f"screen --workers {w}", w, 1) for w in args.workers] + [
        (f"screen --workers {w} --max-batch 4", w, 4) for w in args.workers]  # (no --max-batch: 1)
    samples: dict[str, list] = {name: [] for name, *_ in variants}
    samples["research"], samples["sequential"] = [], []
    loads = []
    for r in range(args.rounds):
        for name, workers, max_batch in rotated(variants, r):
            samples[name].append(run_screen(bundle, folder, workers, max_batch))
        samples["sequential"].append(sequential_throughput(sequential, sorted(folder.iterdir())))
        if research is not None:
            samples["research"].append(research_throughput(research, photos))
        loads.append(load())
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {s[-1]['images_per_s'] if isinstance(s[-1], dict) else s[-1]:.1f}" for n, s in samples.items() if s),
            file=sys.stderr)
    medians = {name: statistics.median(s["images_per_s"] for s in runs) for name, runs in samples.items()
               if runs and isinstance(runs[0], dict)}
    out = {"folder_size": args.folder_size, "runs": samples, "median_images_per_s": medians, "load_average": loads,
           "ratio_vs_workers_1": {n: m / medians["screen --workers 1"] for n, m in medians.items()},
           "startup_s_median": {n: statistics.median(s["startup_s"] for s in runs) for n, runs in samples.items()
                                if runs and isinstance(runs[0], dict)}}
    sequential.close()
    out["sequential_images_per_s"] = statistics.median(samples["sequential"])
    # Ratios taken within each round (same load), then the median: steadier than a ratio of medians.
    out["ratio_vs_sequential_paired"] = {
        n: statistics.median(s["images_per_s"] / b for s, b in zip(samples[n], samples["sequential"])) for n in medians}
    out["ratio_vs_workers_1_paired"] = {
        n: statistics.median(s["images_per_s"] / b["images_per_s"]
                             for s, b in zip(samples[n], samples["screen --workers 1"])) for n in medians}
    if samples["research"]:
        base = statistics.median(samples["research"])
        out["research_images_per_s"] = base
        out["ratio_vs_research"] = {n: m / base for n, m in medians.items()}
        out["ratio_vs_research_paired"] = {
            n: statistics.median(s["images_per_s"] / b for s, b in zip(samples[n], samples["research"]))
            for n in medians}
    return out


def bench_pipeline_variants(args, bundle: Path, photos: list[Path], work: Path) -> dict:
    images = [photos[i % len(photos)] for i in range(args.folder_size)]
    screeners = {"default threads": Screener.from_bundle(bundle), "1 engine thread": Screener.from_bundle(bundle, threads=1)}
    variants = [(f"workers {w}, max_batch {b}, {t}", w, b, t) for t in screeners for w in (1, max(args.workers))
                for b in (1, 4)]
    samples: dict[str, list[float]] = {v[0]: [] for v in variants}
    cpu_ms: dict[str, list[float]] = {v[0]: [] for v in variants}
    for screener in screeners.values():
        pipeline_throughput(screener, images[:4], 1, 1)  # warm-up
    for r in range(args.rounds):
        for name, workers, batch, threads in rotated(variants, r):
            rate, cpu = pipeline_throughput(screeners[threads], images, workers, batch)
            samples[name].append(rate)
            cpu_ms[name].append(cpu)
    engine = screeners["default threads"].engine_info
    for screener in screeners.values():
        screener.close()
    return {"samples": samples, "median_images_per_s": {n: statistics.median(s) for n, s in samples.items()},
            "median_cpu_ms_per_photo": {n: statistics.median(s) for n, s in cpu_ms.items()},
            "engine": f"{engine['backend']}/{engine['precision']}", "load_average": load()}


def bench_bridge(args, bundle: Path, photos: list[Path], work: Path) -> dict:
    jpegs = [p.read_bytes() for p in photos]
    frames, mosaics, small_frames = [], [], []
    for p in photos:
        rgb = cv2.resize(cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB), (2000, 1500), interpolation=cv2.INTER_AREA)
        frames.append(np.ascontiguousarray(rgb).tobytes())
        small_frames.append(cv2.resize(rgb, (1000, 750), interpolation=cv2.INTER_AREA).tobytes())
        mosaic = rgb[:, :, 1].copy()  # what an RGGB sensor records: R and B on alternate sites of alternate rows
        mosaic[0::2, 0::2], mosaic[1::2, 1::2] = rgb[0::2, 0::2, 0], rgb[1::2, 1::2, 2]
        mosaics.append(mosaic.tobytes())
    checkouts = {"": REPO, **({"baseline ": args.baseline_repo} if args.baseline_repo else {})}
    servers = {label: ServerProcess(bundle, work / f"bridge{i}.sqlite3", repo=root,
                                    transport=("--socket", str(work / f"bridge{i}.sock")))
               for i, (label, root) in enumerate(checkouts.items())}
    formats = ("jpeg 12 MP", "raw rgb8 3 MP", "raw rgb8 3 MP by fd", "raw rgb8 3 MP by fd, frame in a memfd",
               "raw bayer_rggb8 3 MP", "raw rgb8 0.75 MP")
    probabilities: list[float] = []
    fd_probabilities: list[float] = []

    def largest_difference(a: dict, b: dict) -> float:
        return max(abs(a[c] - b[c]) for c in a)

    try:
        processes = {label: psutil.Process(server.process.pid) for label, server in servers.items()}
        clients = {label: connect(server.address, timeout=120) for label, server in servers.items()}
        for label, client in clients.items():
            client.hello()
            client.screen("warm-up", jpegs[0])
        label_of = {label + f: label for label, client in clients.items() for f in formats  # variant -> its server
                    if client.offers_fd_bodies or "by fd" not in f}
        samples: dict[str, list[float]] = {name: [] for name in label_of}
        server_ms: dict[str, list[float]] = {k: [] for k in samples}
        # CPU time per request (server process, user + system; client, this process): the work a request
        # costs, which a loaded machine stretches in wall time but does not change.
        cpu_ms: dict[str, list[float]] = {k: [] for k in samples}
        client_cpu_ms: dict[str, list[float]] = {k: [] for k in samples}
        for r in range(args.bridge_rounds):
            i = r % len(photos)
            memfd = sealed_memfd(frames[i])  # the frame as a camera capturing into a memfd holds it
            sends = {}
            for label, client in clients.items():
                sends.update({
                    label + formats[0]: lambda c=client: c.screen(f"j{r}", jpegs[i]),
                    label + formats[1]: lambda c=client: c.screen_raw(f"r{r}", frames[i], width=2000, height=1500,
                                                                      by_fd=False),
                    label + formats[2]: lambda c=client: c.screen_raw(f"f{r}", frames[i], width=2000, height=1500,
                                                                      by_fd=True),
                    label + formats[3]: lambda c=client: c.screen_memfd(f"m{r}", memfd, width=2000, height=1500),
                    label + formats[4]: lambda c=client: c.screen_raw(f"b{r}", mosaics[i], width=2000, height=1500,
                                                                      pixel_format="bayer_rggb8", by_fd=False),
                    label + formats[5]: lambda c=client: c.screen_raw(f"s{r}", small_frames[i], width=1000,
                                                                      height=750, by_fd=False)})
            replies = {}
            for name in rotated([name for name in sends if name in label_of], r):
                process = processes[label_of[name]]
                cpu, client_cpu, start = sum(process.cpu_times()[:2]), time.process_time(), time.perf_counter()
                replies[name] = sends[name]()
                samples[name].append((time.perf_counter() - start) * 1e3)
                client_cpu_ms[name].append((time.process_time() - client_cpu) * 1e3)
                cpu_ms[name].append((sum(process.cpu_times()[:2]) - cpu) * 1e3)
                server_ms[name].append(replies[name]["result"]["timings_ms"]["total"])
            os.close(memfd)
            jpeg, inline = (replies[n]["result"]["probabilities"] for n in formats[:2])
            probabilities.append(largest_difference(jpeg, inline))
            fd_probabilities += [largest_difference(inline, replies[n]["result"]["probabilities"])
                                 for n in formats[2:4] if n in replies]
        for client in clients.values():
            client.close()
    finally:
        for server in servers.values():
            server.stop()
    medians = {n: statistics.median(s) for n, s in samples.items()}
    jpeg_of = {n: label + formats[0] for n, label in label_of.items()}  # the same server's JPEG variant
    return {"round_trip_ms": samples, "median_round_trip_ms": medians,
            "median_server_screening_ms": {n: statistics.median(s) for n, s in server_ms.items()},
            "mean_server_cpu_ms": {n: statistics.fmean(s) for n, s in cpu_ms.items()},  # 10 ms ticks: a mean
            "mean_client_cpu_ms": {n: statistics.fmean(s) for n, s in client_cpu_ms.items()},
            "speedup_vs_jpeg": {n: medians[jpeg_of[n]] / m for n, m in medians.items()},
            "speedup_vs_jpeg_paired": {n: statistics.median(j / x for j, x in zip(samples[jpeg_of[n]], s))
                                       for n, s in samples.items()},
            "max_probability_difference_raw_vs_jpeg": max(probabilities),
            "max_probability_difference_fd_vs_inline": max(fd_probabilities, default=None), "frame_bytes": {
                "jpeg 12 MP": statistics.median(len(j) for j in jpegs), "raw rgb8 3 MP": len(frames[0]),
                "raw bayer_rggb8 3 MP": len(mosaics[0]), "raw rgb8 0.75 MP": len(small_frames[0])},
            "baseline_repo": str(args.baseline_repo) if args.baseline_repo else None,
            "load_average": load()}


def transfer(message: Message, fds: tuple[int, ...] = ()) -> memoryview:
    """Client write to parsed message (both CRC-32s checked) over a Unix socket pair, the server's
    way; with ``fds``, its descriptor taken and mapped. The image received (body or mapping)."""
    ours, theirs = socket.socketpair()
    stream, parsed = UnixSocketStream(theirs, "bench"), {}

    def receive() -> None:
        parser = FrameParser(1 << 30)
        while True:
            parser.feed(stream.read() or b"")
            if (received := parser.next()) is not None:
                parsed["image"] = received.body
                for memfd in stream.take_fds(0, parser.consumed):
                    parsed["image"] = map_sealed_frame(memfd, 1 << 30)
                    os.close(memfd)
                return

    receiver = threading.Thread(target=receive)
    receiver.start()
    client = BridgeClient(ours)
    client.send(message, fds)
    receiver.join()
    client.close()
    stream.close()
    return parsed["image"]


def bench_bridge_costs(args, bundle: Path, photos: list[Path], work: Path) -> dict:
    """Each part of a request alone, wall and CPU time (this process, all threads: what the part costs
    whatever the load), the 12 MP JPEG and the 3 MP frame interleaved."""
    jpeg = photos[0].read_bytes()
    rgb = cv2.resize(cv2.cvtColor(cv2.imread(str(photos[0])), cv2.COLOR_BGR2RGB), (2000, 1500),
                     interpolation=cv2.INTER_AREA)
    frame = np.ascontiguousarray(rgb).tobytes()
    layout = {"format": "raw", "pixel_format": "rgb8", "width": 2000, "height": 1500}
    inputs = {"jpeg 12 MP": ({"format": "jpeg"}, jpeg), "raw rgb8 3 MP": (layout, frame),
              "raw rgb8 3 MP by fd": ({**layout, "body": "fd"}, frame)}
    store = ResultStore(work / "costs.sqlite3")
    screener = Screener.from_bundle(bundle)
    wall: dict[str, dict[str, list[float]]] = {n: collections.defaultdict(list) for n in inputs}
    cpu: dict[str, dict[str, list[float]]] = {n: collections.defaultdict(list) for n in inputs}

    def timed(name: str, part: str, work) -> object:
        cpu_start, start = time.process_time(), time.perf_counter()
        out = work()
        wall[name][part].append((time.perf_counter() - start) * 1e3)
        cpu[name][part].append((time.process_time() - cpu_start) * 1e3)
        return out

    for r in range(args.bridge_rounds):
        for name in rotated(list(inputs), r):
            meta, body = inputs[name]
            if meta.get("body") == "fd":
                memfd = timed(name, "frame into a sealed memfd", lambda: sealed_memfd(body))
                message, fds = Message(MessageType.SCREEN, {"request_id": "c", **meta}), (memfd,)
            else:
                message, fds = Message(MessageType.SCREEN, {"request_id": "c", **meta}, body), ()
            image = timed(name, "transfer", lambda: transfer(message, fds))
            for memfd in fds:
                os.close(memfd)
            source = image if meta["format"] == "jpeg" else RawFrame(image, "rgb8", 2000, 1500)
            timed(name, "body sha256", lambda: sha256_hex(image))
            timed(name, "journal and drop", lambda: (store.accept(f"{name}-j{r}", "0" * 64, meta, image),
                                                     store.complete(f"{name}-j{r}", {"status": "no-referral"})))
            timed(name, "commit result",
                  lambda: store.settle(f"{name}-s{r}", "0" * 64, meta, 0, {"status": "no-referral"}))
            result = timed(name, "screening", lambda: screener.screen(source))
            assert result.error is None
            for stage in ("decode", "preprocess", "inference"):
                wall[name][f"screening: {stage}"].append(result.timings_ms[stage])
    screener.close()
    store.close()
    def medians(times: dict) -> dict:
        return {n: {part: round(statistics.median(v), 2) for part, v in c.items()} for n, c in times.items()}

    return {"median_ms": medians(wall), "median_cpu_ms": medians(cpu),
            "samples_ms": wall, "samples_cpu_ms": cpu, "load_average": load()}


def bench_memory(args, bundle: Path, photos: list[Path], work: Path) -> dict:
    folder = folder_of(work, "large", photos, args.rss_photos)
    return {"photos": args.rss_photos, **run_screen(bundle, folder, max(args.workers), 4), "load_average": load()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="Worker counts compared with 1.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folder-size", type=int, default=64)
    parser.add_argument("--bridge-rounds", type=int, default=24)
    parser.add_argument("--rss-photos", type=int, default=1000)
    parser.add_argument("--baseline-repo", type=Path, default=None,
                        help="Bridge step: also run the server of this checkout (e.g. the previous main), interleaved.")
    parser.add_argument("--skip-research", action="store_true", help="No host extras: leave the research baseline out.")
    parser.add_argument("--only", nargs="+", choices=["screen", "variants", "bridge", "bridge-costs", "memory"],
                        default=["screen", "variants", "bridge", "bridge-costs", "memory"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    originals = sorted((args.datasets / "heimed" / "full").glob("*.jpg"))
    if not originals:
        sys.exit(f"no HEI-MED originals under {args.datasets / 'heimed' / 'full'}")
    report: dict = {"machine": machine_info(), "bundle": str(args.bundle), "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "load_average_start": load()}
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        work = Path(tmp)
        photos = [make_12mp_jpeg(o, work / f"12mp-{i}.jpg") for i, o in enumerate(originals)]
        steps = {"screen": bench_screen, "variants": bench_pipeline_variants, "bridge": bench_bridge,
                 "bridge-costs": bench_bridge_costs, "memory": bench_memory}
        for name in args.only:
            print(f"-- {name}", file=sys.stderr)
            report[name] = steps[name](args, args.bundle, photos, work)
            print(json.dumps({k: v for k, v in report[name].items() if "median" in k or "mean" in k or "ratio" in k or "speedup" in k
                              or k in ("peak_rss_mb", "images_per_s")}, indent=1), file=sys.stderr)
    report["load_average_end"] = load()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
