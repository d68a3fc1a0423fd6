"""The driver of ``archive screen``: what is left to screen, a Ray Data pipeline over actors, and the
rows streamed into the results as they arrive.

Ray Data rather than a hand-made scheduler: it spreads batches over an actor pool on one machine or a
cluster, keeps a bounded number of batches in flight (backpressure), restarts actors on failed nodes,
and streams results back to the driver, which is the only writer of the results (so parts are whole
and never written twice).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from edge_retina.archive_screening.results import already_screened, bundle_sha256, write_part
from edge_retina.archive_screening.worker import SKIPPED, ScreeningWorker
from edge_retina.bundle import load_bundle
from edge_retina.engines import int8_guard_caveat
from edge_retina.errors import EdgeRetinaError
from edge_retina.out_paths import unwritable_reason
from edge_retina.screener import choose_engine

logger = logging.getLogger(__name__)

#: Object store of a local Ray: only paths and result rows travel through it (workers read the
#: photographs themselves), so a small store is plenty and leaves the memory to the engines.
LOCAL_OBJECT_STORE_BYTES = 200 * 2**20
#: A part file is written when this many rows wait, or this long after the last part: at most that
#: much work is repeated after a kill, and an archive of millions of photos stays at thousands of parts.
FLUSH_ROWS = 1000
FLUSH_SECONDS = 15.0
#: Ray tracks every block as an object: past this many, blocks hold several batches each.
MAX_BLOCKS = 10_000


@dataclass
class ArchiveProgress:
    total: int  # photographs this run looks at
    done_before: int = 0  # of those, already in the results with this bundle (skipped unless changed)
    seen: int = 0  # screened or left out so far
    screened: int = 0  # new rows (errors included)
    skipped: int = 0  # already screened with this bundle
    errors: int = 0
    parts: list[Path] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)  # reset once Ray is up: rates are of screening
    ray_start_seconds: float = 0.0  # starting (or joining) Ray
    workers: int = 0

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Photographs screened per second by this run: those already screened take no time to
        leave out, and counting them would overstate the speed of a resumed run."""
        return self.screened / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """The photographs not seen yet, less those expected to be left out, at this run's rate."""
        expected_skips = max(0, self.done_before - self.skipped)
        to_screen = max(0, self.total - self.seen - expected_skips)
        return to_screen / self.rate if self.rate > 0 else None


def connect(address: str | None, cpus: int, *, verbose: bool = False) -> Callable[[], None] | None:
    """Join the cluster at ``address``, or start a local Ray with ``cpus`` CPUs; returns the function
    to call at the end of the run: for a local Ray, one that shuts it down and removes its temp
    folder; for ``address``, ``ray.shutdown``, which only disconnects this driver (the cluster keeps
    running); None when the caller had already started Ray (it shuts Ray down itself).

    Ray's Python warnings (its token authentication, its progress bars being off) and its workers'
    output run past 80 columns and are not the user's to act on: shown with ``-v`` only, like every
    library's (edge_retina.cli.library_output). Not the C++ core worker's line about the actors'
    constructor arguments (ray-project/ray#57733): RAY_BACKEND_LOG_LEVEL would hide it, but setting
    it prints a line of its own."""
    import ray

    level = logging.INFO if verbose else logging.ERROR
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours shows photos/s and an ETA
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(level)
    if ray.is_initialized():
        return None
    if address:
        ray.init(address=address, logging_level=level, log_to_driver=verbose)
        return ray.shutdown
    # A folder of our own, removed after the run: Ray leaves a /tmp/ray/session_* folder per start
    # and has no option to remove it at shutdown. With -v, Ray's default folder keeps the logs.
    temp_dir = None if verbose else Path(tempfile.mkdtemp(prefix="edge-retina-ray-"))

    def shutdown() -> None:
        ray.shutdown()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)

    try:
        # Ray runs its workers at niceness 15 so they never starve its own daemons; here the workers
        # are the job, and on a shared machine that niceness let any other process take their CPU
        # (measured: 3 instead of 65 photos/s per worker under load). Clusters set
        # RAY_worker_niceness themselves.
        ray.init(num_cpus=cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False,
                 logging_level=level, log_to_driver=verbose, _system_config={"worker_niceness": 0},
                 **({} if temp_dir is None else {"_temp_dir": str(temp_dir)}))
    except BaseException:
        shutdown()
        raise
    return shutdown


def pending_work(sources: pa.Table, out: Path, bundle_hash: str) -> pa.Table:
    """The sources, each with what the results already hold for it with this bundle."""
    todo = sources.join(already_screened(out, bundle_hash), keys="source", join_type="left outer")
    return todo.set_column(todo.schema.get_field_index("done"), "done", pc.fill_null(todo.column("done"), False))


def screen_archive(
    sources: pa.Table,
    out: Path,
    bundle: Path,
    *,
    address: str | None = None,
    workers: int | None = None,
    threads: int = 1,
    batch_size: int = 32,
    backend: str | None = None,
    precision: str | None = None,
    on_progress: Callable[[ArchiveProgress], None] = lambda _: None,
    verbose: bool = False,
) -> ArchiveProgress:
    """Screen every source not yet in ``out`` with ``bundle``; rows land in ``out`` as parts finish.
    ``verbose``: Ray's own log lines too (``connect``)."""
    import ray

    reason = unwritable_reason(out, folder=True)
    if reason:  # before Ray starts and the photos are screened
        raise EdgeRetinaError(f"cannot write results to {out}: {reason}")
    bundle = Path(bundle).resolve()  # actors do not share the driver's working directory
    opened = load_bundle(bundle)  # verified here first: a bad bundle or engine choice is one clear error
    opened.select_engine(backend=backend, precision=precision)
    if any(e.precision == "int8" and e.guard_measured_on for e in opened.manifest.engines):
        # The workers' own warning reaches the driver only with --verbose (Ray's log_to_driver). Only
        # then is the workers' choice made here too: it detects the device profile (OpenVINO's devices).
        engine, options, _ = choose_engine(opened, backend, None, precision)
        caveat = int8_guard_caveat(engine, options.get("device", "CPU"))
        if caveat:
            logger.warning("%s", caveat)
    todo = pending_work(sources, out, bundle_sha256(opened))
    progress = ArchiveProgress(total=todo.num_rows, done_before=pc.sum(todo.column("done")).as_py() or 0)
    if todo.num_rows == 0:
        return progress
    shutdown = connect(address, max(os.cpu_count() or 1, (workers or 1) * threads), verbose=verbose)
    progress.ray_start_seconds, progress.started = time.monotonic() - progress.started, time.monotonic()
    try:
        pool = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        progress.workers = pool
        out.mkdir(parents=True, exist_ok=True)
        blocks = min(MAX_BLOCKS, math.ceil(todo.num_rows / batch_size))
        dataset = ray.data.from_arrow(todo, override_num_blocks=blocks).map_batches(
            ScreeningWorker, fn_constructor_args=(str(bundle),),
            fn_constructor_kwargs={"backend": backend, "precision": precision, "threads": threads},
            batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=pool),
            num_cpus=threads,
        )
        waiting: list[pa.Table] = []
        last_flush = time.monotonic()
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            skipped = pc.equal(batch.column("status"), SKIPPED)
            rows = batch.filter(pc.invert(skipped))
            progress.seen += batch.num_rows
            progress.skipped += batch.num_rows - rows.num_rows
            progress.screened += rows.num_rows
            progress.errors += pc.sum(pc.equal(rows.column("status"), "error")).as_py() or 0
            waiting.append(rows)
            if sum(t.num_rows for t in waiting) >= FLUSH_ROWS or time.monotonic() - last_flush >= FLUSH_SECONDS:
                _flush(out, waiting, progress)
                last_flush = time.monotonic()
            on_progress(progress)
        _flush(out, waiting, progress)
    finally:
        if shutdown is not None:
            shutdown()
    return progress


def _flush(out: Path, waiting: list[pa.Table], progress: ArchiveProgress) -> None:
    table = pa.concat_tables(waiting) if waiting else None
    waiting.clear()
    if table is not None and table.num_rows:
        progress.parts.append(write_part(out, table))
