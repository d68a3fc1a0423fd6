"""Archive screening on a local Ray against single-process ``screen``; resume; DICOM vs JPEG.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_archive.py --bundle artifacts/demo/default-bundle \
        --photos 2400 --json bench_archive.json

On the first ``--photos`` shared photographs (``eye4class``, name order; a folder of symlinks, so
both commands see the same paths), each in its own process, the variants run interleaved for
``--rounds`` rounds (the machine may be shared: the load average is recorded around every run):

- ``screen``: single-process, with the bundle's preferred engine and with ONNX Runtime (the best of
  them is the reference);
- ``archive``: ``archive screen`` on a local Ray, 2 workers (preferred engine, ONNX Runtime) and 1
  worker (the per-worker throughput the scaling arithmetic in docs/archives.md uses).

Throughput is photos / wall-clock seconds of the whole command (start-up included; Ray's own start-up
is also reported). Then:

- **re-run** of a finished archive run: photos screened again (must be 0), parts unchanged;
- **kill -9** of ``archive screen`` once its first part is written, then a re-run: every photo must
  have exactly one row, and the Ray processes the killed run left behind are counted;
- **stages**: median ms per photo of reading + hashing the file and of Screener's stages, one
  thread (where a worker's time goes);
- **DICOM vs JPEG**: shared JPEGs wrapped unchanged in DICOM OP objects, screened both ways by one
  Screener: probabilities compared at full float precision.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from dicom_support import jpeg_to_dicom  # noqa: E402

from edge_retina.archive_screening.results import read_results  # noqa: E402
from edge_retina.bench.machine import machine_info  # noqa: E402
from edge_retina.screener import Screener  # noqa: E402

CLI = [sys.executable, "-m", "edge_retina"]
#: (name, command before the photos): single-process screen with each backend, archive with 2 and 1 workers.
VARIANTS = [
    ("screen (defaults)", "screen"),
    ("screen --backend onnxruntime", "screen --backend onnxruntime"),
    ("archive --workers 2 (defaults)", "archive screen --workers 2"),
    ("archive --workers 2 --backend onnxruntime", "archive screen --workers 2 --backend onnxruntime"),
    ("archive --workers 1 --backend onnxruntime", "archive screen --workers 1 --backend onnxruntime"),
]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def photo_folder(datasets: Path, count: int, into: Path) -> Path:
    photos = sorted((datasets / "eye4class").rglob("*.jpg"))[:count]
    if len(photos) < count:
        raise SystemExit(f"only {len(photos)} photos under {datasets / 'eye4class'}")
    folder = into / "photos"
    folder.mkdir()
    for i, photo in enumerate(photos):
        (folder / f"{i:05d}-{photo.name}").symlink_to(photo)
    return folder


def timed(command: list[str]) -> dict:
    load = os.getloadavg()[0]
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=REPO)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({run.returncode}):\n{run.stderr[-3000:]}")
    return {"seconds": round(seconds, 2), "load_before": load, "load_after": os.getloadavg()[0],
            "stderr_tail": run.stderr.strip().splitlines()[-3:]}


def archive_report(stderr_tail: list[str]) -> dict:
    text = " ".join(stderr_tail)
    found = re.search(r"(\d+) screened \((\d+) errors\), (\d+) already.*?([\d.]+) photos/s.*?Ray up in ([\d.]+) s", text)
    if not found:
        return {}
    screened, errors, skipped, rate, ray_start = found.groups()
    return {"screened": int(screened), "errors": int(errors), "skipped": int(skipped),
            "rate_after_ray_start": float(rate), "ray_start_seconds": float(ray_start)}


def throughput(folder: Path, bundle: Path, work: Path, rounds: int, count: int) -> dict:
    variants = {name: [*CLI, *command.split(), str(folder), "--bundle", str(bundle)] for name, command in VARIANTS}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for r in range(rounds):
        for name, command in variants.items():
            out = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
            suffix = "r.parquet" if name.startswith("archive") else "r.csv"
            result = timed([*command, "--out", str(out / suffix)])
            result["photos_per_s"] = round(count / result["seconds"], 2)
            if name.startswith("archive"):
                result.update(archive_report(result["stderr_tail"]))
            runs[name].append(result)
            print(f"round {r + 1} {name}: {result['photos_per_s']} photos/s ({result['seconds']} s, load "
                  f"{result['load_before']:.1f}->{result['load_after']:.1f})", flush=True)
    medians = {name: statistics.median(x["photos_per_s"] for x in rs) for name, rs in runs.items()}
    best_screen = max(v for k, v in medians.items() if k.startswith("screen"))
    return {"runs": runs, "median_photos_per_s": medians, "best_screen_photos_per_s": best_screen,
            "archive_vs_best_screen": {k: round(v / best_screen, 3) for k, v in medians.items()
                                       if k.startswith("archive")}}


def rerun(folder: Path, bundle: Path, work: Path, count: int) -> dict:
    out = work / "rerun" / "r.parquet"
    command = [*CLI, "archive", "screen", str(folder), "--bundle", str(bundle), "--out", str(out)]
    first = timed(command)
    before = sorted(p.name for p in out.iterdir())
    rows_before = read_results(out).sort_by("source")
    second = timed(command)
    report = archive_report(second["stderr_tail"])
    return {"first_seconds": first["seconds"], "rerun_seconds": second["seconds"], **report,
            "parts_unchanged": sorted(p.name for p in out.iterdir()) == before,
            "rows_unchanged": read_results(out).sort_by("source").equals(rows_before),
            "rows": rows_before.num_rows, "photos": count}


def kill_and_resume(folder: Path, bundle: Path, work: Path, count: int) -> dict:
    out = work / "killed" / "r.parquet"
    command = [*CLI, "archive", "screen", str(folder), "--bundle", str(bundle), "--out", str(out)]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), cwd=REPO,
                             start_new_session=True)
    while not (out.is_dir() and any(out.glob("part-*.parquet"))):
        if child.poll() is not None:
            raise SystemExit("archive screen finished before it could be killed: use more --photos")
        time.sleep(0.5)
    time.sleep(2.0)  # mid-way through the next part
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    rows_at_kill = read_results(out).num_rows
    time.sleep(5.0)
    leftovers = [p.pid for p in psutil.process_iter(["pid"]) if _in_session(p, child.pid)]
    for pid in leftovers:  # the killed run's own Ray processes (its session), if any outlived it
        os.kill(pid, signal.SIGKILL)
    resumed = timed(command)
    sources = read_results(out).column("source").to_pylist()
    return {"rows_at_kill": rows_at_kill, "ray_processes_left_after_kill": len(leftovers),
            **archive_report(resumed["stderr_tail"]), "rows": len(sources), "photos": count,
            "every_photo_exactly_once": len(sources) == len(set(sources)) == count}


def _in_session(process: psutil.Process, session: int) -> bool:
    try:
        return os.getsid(process.pid) == session
    except (ProcessLookupError, PermissionError):
        return False


def dicom_vs_jpeg(datasets: Path, bundle: Path, work: Path, count: int) -> dict:
    jpegs = sorted((datasets / "heimed" / "full").glob("*.jpg")) + sorted((datasets / "eye4class").rglob("*.jpg"))
    jpegs = jpegs[:count]
    folder = work / "dicom"
    folder.mkdir()
    identical, worst = 0, 0.0
    with Screener.from_bundle(bundle) as screener:
        for i, jpeg in enumerate(jpegs):
            dcm = jpeg_to_dicom(jpeg, folder / f"{i}.dcm", laterality="R")
            a, b = screener.screen(jpeg), screener.screen(dcm)
            assert a.screened and b.screened, (a.error, b.error)
            identical += a.class_probabilities == b.class_probabilities
            worst = max(worst, *(abs(a.class_probabilities[c] - b.class_probabilities[c]) for c in a.class_probabilities))
    return {"photos": len(jpegs), "identical_probabilities": identical, "max_abs_difference": worst}


def stages(folder: Path, bundle: Path, count: int) -> dict:
    """Where a worker's time goes, per photo: reading and hashing the file, then Screener's stages."""
    photos = sorted(folder.iterdir())[:count]
    read_ms, timings = [], []
    with Screener.from_bundle(bundle, backend="onnxruntime", threads=1) as screener:
        for photo in photos:
            start = time.perf_counter()
            data = photo.read_bytes()
            hashlib.sha256(data).hexdigest()
            read_ms.append((time.perf_counter() - start) * 1e3)
            timings.append(screener.screen(data, name=str(photo)).timings_ms)
    medians = {stage: round(statistics.median(t[stage] for t in timings if stage in t), 3)
               for stage in ("decode", "preprocess", "inference", "lookup", "total")}
    return {"photos": len(photos), "read_and_sha256_ms": round(statistics.median(read_ms), 3), **medians}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--photos", type=int, default=2400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dicom-photos", type=int, default=60)
    parser.add_argument("--skip", nargs="*", default=[], choices=["stages", "throughput", "rerun", "kill", "dicom"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    bundle = args.bundle.resolve()
    report: dict = {"machine": machine_info(), "photos": args.photos, "bundle": str(args.bundle),
                    "load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
        work = Path(tmp)
        folder = photo_folder(args.datasets, args.photos, work)
        if "dicom" not in args.skip:
            report["dicom_vs_jpeg"] = dicom_vs_jpeg(args.datasets, bundle, work, args.dicom_photos)
            print("dicom vs jpeg:", report["dicom_vs_jpeg"], flush=True)
        if "stages" not in args.skip:
            report["stages_ms"] = stages(folder, bundle, min(args.photos, 300))
            print("median ms per photo, 1 worker:", report["stages_ms"], flush=True)
        if "throughput" not in args.skip:
            report["throughput"] = throughput(folder, bundle, work, args.rounds, args.photos)
        if "rerun" not in args.skip:
            report["rerun"] = rerun(folder, bundle, work, args.photos)
            print("re-run:", report["rerun"], flush=True)
        if "kill" not in args.skip:
            report["kill_9"] = kill_and_resume(folder, bundle, work, args.photos)
            print("kill -9:", report["kill_9"], flush=True)
    report["load_average_end"] = os.getloadavg()
    text = json.dumps(report, indent=1, default=str)
    if args.json:
        args.json.write_text(text)
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=1, default=str))


if __name__ == "__main__":
    main()
