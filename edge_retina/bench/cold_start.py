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

import psutil  # noqa: E402

from edge_retina.screener import Screener  # noqa: E402


def peak_rss_mb() -> float:
    """The process's peak resident set size (resource's ru_maxrss; the current RSS where it is missing)."""
    try:
        import resource
    except ImportError:  # Windows: no resource module
        return psutil.Process().memory_info().rss / 2**20
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**20 if sys.platform == "darwin" else kib / 2**10  # bytes on macOS, KiB on Linux


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
