"""Screening many photos with every core: decode and preprocessing on worker threads, the engine on
the caller's thread, results in input order.

    with ScreeningPipeline(screener, workers=4) as pipeline:
        for result in pipeline.screen(paths):
            ...
        pipeline.throughput  # images, seconds, images/s of the last run

A 12 MP camera JPEG costs ~15 ms of decode and ~4 ms of preprocessing, the student's engine 2-3 ms:
screening one photo at a time leaves the engine idle most of the time and every core but one idle
all of the time. Here a feeder thread takes the input lazily, a pool of ``workers`` threads reads,
decodes and preprocesses (``Screener.preprocess``), and the caller's thread runs the engine on the
photos in order (``Screener.complete``), several at once when ``max_batch`` > 1 and they are ready.

Threads rather than processes: OpenCV and numpy release the GIL for the decode and the pixel work,
so threads use the cores without copying each tensor between processes or duplicating the runtime's
memory per worker (measured in BENCHMARKS.md "Throughput").

Memory stays bounded whatever the input's length: at most ``queue_limit`` photos are in flight
(being read, prepared, or waiting for the engine); the feeder waits for a slot before it takes the
next input. Bad input stays per photo: it becomes that photo's error Result; with
``contain_errors`` (a server, where one request must never take the others down) so does any other
exception while a photo is prepared or screened.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from .preprocess.decode import ImageSource
from .screener import Result, Screener, Staged
from .wording import plural

T = TypeVar("T")

log = logging.getLogger("edge_retina.pipeline")

#: How long the feeder waits for a free slot before checking whether the run was abandoned.
_SLOT_POLL_SECONDS = 0.1


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(screener: Screener) -> int:
    """The applied device profile's ``workers``, else one per usable core."""
    profile = screener.device_profile
    return profile.workers if profile is not None and profile.workers else usable_cores()


@dataclass(frozen=True)
class Throughput:
    """One run: from the moment its first photo was taken up to its last result (start-up excluded)."""

    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def describe(self) -> str:
        return f"{plural(self.images, 'image')} in {self.seconds:.2f} s, {self.images_per_s:.1f} images/s"


@dataclass
class _Entry(Generic[T]):
    item: T
    future: Future  # -> Staged


class _Failed:
    """The input iterable (or the ``source`` callback outside ImageError) raised: re-raised in the caller."""

    def __init__(self, error: BaseException):
        self.error = error


_END = object()


class ScreeningPipeline:
    """Screens streams of photos with one :class:`Screener` (see the module docstring)."""

    def __init__(self, screener: Screener, *, workers: int | None = None, max_batch: int = 1,
                 queue_limit: int | None = None, contain_errors: bool = False,
                 engine_lock: threading.Lock | None = None):
        """``engine_lock``: held around each engine call, for a caller that also runs the screener's
        engine from another thread (the bridge's self-test)."""
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.screener = screener
        self.workers = workers or default_workers(screener)
        self.max_batch = max_batch
        # Enough photos in flight to keep every worker busy while a batch waits for the engine.
        self.queue_limit = max(queue_limit or 2 * self.workers + max_batch, max_batch)
        self.contain_errors = contain_errors
        self._engine_lock = engine_lock or contextlib.nullcontext()
        self.throughput: Throughput | None = None
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="edge-retina-prepare")

    def screen(self, sources: Iterable[ImageSource]) -> Iterator[Result]:
        """Results of ``sources`` (paths, bytes, arrays), in their order."""
        for _, result in self.run(sources):
            yield result

    def run(self, items: Iterable[T], source: Callable[[T], ImageSource | Result] | None = None,
            name: Callable[[T], str] | None = None) -> Iterator[tuple[T, Result]]:
        """``(item, result)`` per item, in input order.

        ``source(item)`` gives the image to screen (default: the item itself), or a finished Result
        for an item with nothing to screen (a path that does not exist...), which is passed through
        in its place; it runs on a worker thread, so it may read files. ``name(item)`` labels the
        result (default: the source's path).
        """
        pending: collections.deque = collections.deque()
        ready = threading.Condition()
        slots = threading.Semaphore(self.queue_limit)
        abandoned = threading.Event()
        clock: dict[str, float] = {}

        def post(entry: object) -> None:
            with ready:
                pending.append(entry)
                ready.notify()

        def feed() -> None:
            try:
                inputs = iter(items)
                while True:
                    # A slot first, then the item: an input that is a queue of its own (the bridge's)
                    # keeps what the pipeline has no room for.
                    while not slots.acquire(timeout=_SLOT_POLL_SECONDS):
                        if abandoned.is_set():
                            return
                    item = next(inputs, _END)
                    if item is _END or abandoned.is_set():
                        return
                    clock.setdefault("start", time.perf_counter())
                    post(_Entry(item, self._pool.submit(self._stage, item, source, name)))
            except BaseException as exc:  # noqa: BLE001 -- handed to the caller's thread
                post(_Failed(exc))
            finally:
                post(_END)

        feeder = threading.Thread(target=feed, name="edge-retina-feeder", daemon=True)
        self.throughput = None
        count = 0
        feeder.start()
        try:
            while True:
                with ready:
                    while not pending:
                        ready.wait()
                    head = pending.popleft()
                if head is _END:
                    break
                if isinstance(head, _Failed):
                    raise head.error
                batch = [head]
                # Micro-batch: add the photos right behind it that are already prepared (never wait).
                while len(batch) < self.max_batch:
                    with ready:
                        follower = pending[0] if pending else None
                        if not isinstance(follower, _Entry) or not follower.future.done():
                            break
                        batch.append(pending.popleft())
                results = self._complete(batch, name)
                for entry, result in zip(batch, results):
                    slots.release()
                    count += 1
                    clock["end"] = time.perf_counter()
                    yield entry.item, result
        finally:
            abandoned.set()
            with ready:
                for entry in pending:
                    if isinstance(entry, _Entry):
                        entry.future.cancel()
            if count:
                self.throughput = Throughput(count, clock["end"] - clock["start"])

    def _complete(self, batch: list[_Entry], name: Callable[[T], str] | None) -> list[Result]:
        staged = []
        for entry in batch:  # not under the engine lock: they may still be decoding
            try:
                staged.append(entry.future.result())
            except Exception as exc:  # noqa: BLE001 -- this item's result, not the run's end
                if not self.contain_errors:
                    raise
                staged.append(Staged(self._failure(entry.item, name, exc), None, time.perf_counter()))
        try:
            with self._engine_lock:
                return self.screener.complete(staged)
        except Exception as exc:  # noqa: BLE001 -- the engine failed on this batch: its items' results
            if not self.contain_errors:
                raise
            return [s.result if s.tensor is None else self._failure(entry.item, name, exc)
                    for entry, s in zip(batch, staged)]

    @staticmethod
    def _failure(item: T, name: Callable[[T], str] | None, exc: Exception) -> Result:
        label = name(item) if name is not None else str(item)
        log.error("screening %s failed", label, exc_info=exc)
        return Result(label, error=f"{type(exc).__name__}: {exc}", error_code="internal")

    def _stage(self, item: T, source: Callable[[T], ImageSource | Result] | None,
               name: Callable[[T], str] | None) -> Staged:
        start = time.perf_counter()
        image = source(item) if source is not None else item
        if isinstance(image, Result):
            return Staged(image, None, start)
        return self.screener.preprocess(image, name=name(item) if name is not None else None)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "ScreeningPipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
