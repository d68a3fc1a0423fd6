"""Run in a fresh process by the latency benchmark: load a bundle, screen images, report timings.

    python -m edge_retina.bench.cold_start BUNDLE --backend onnxruntime --precision fp32 IMAGE...

Prints one JSON line: milliseconds from process start to the first result and from bundle load to
the first result, and the process's peak RSS after screening every image (what ``edge-retina screen``
needs on the device).
"""
from __future__ import annotations

import time

PROCESS_CLOCK_START = time.time()  # before the heavy imports below

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402

from edge_retina.screener import Screener  # noqa: E402


def peak_rss_mb() -> float:
    """This process's peak resident set size, in MiB.

    Linux: VmHWM of /proc/self/status, the high-water mark of this program's memory. Not
    getrusage's ru_maxrss: Linux carries that across fork and exec, so a child started from a
    big parent (the benchmark, with several engines loaded) would report the parent's peak.
    Elsewhere: ru_maxrss (bytes on macOS), or the current RSS where there is no resource module.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    try:
        import resource
    except ImportError:  # Windows
        return psutil.Process().memory_info().rss / 2**20
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--backend")
    parser.add_argument("--precision")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    process_start = psutil.Process().create_time()
    load_start = time.time()
    screener = Screener.from_bundle(args.bundle, backend=args.backend, precision=args.precision,
                                    threads=args.threads)
    first = screener.screen(args.images[0])
    first_done = time.time()
    if first.error:
        raise SystemExit(f"{args.images[0]}: {first.error}")
    for image in args.images[1:]:
        screener.screen(image)
    screener.close()
    print(json.dumps({
        "imports_ms": (load_start - min(process_start, PROCESS_CLOCK_START)) * 1e3,
        "load_to_first_result_ms": (first_done - load_start) * 1e3,
        "process_to_first_result_ms": (first_done - min(process_start, PROCESS_CLOCK_START)) * 1e3,
        "peak_rss_mb": peak_rss_mb(),
    }))


if __name__ == "__main__":
    main()
