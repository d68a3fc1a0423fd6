"""The bridge server: camera requests in, screening results out, nothing accepted ever lost.

Threads: one per connection (reads frames, answers them in order), the screening pipeline
(``edge_retina.pipeline``: decode and preprocessing of queued requests on ``workers`` threads, the
engine on one, results in order, every failure that request's result), the journal writer and the
listener. Memory is bounded: at most ``queue_capacity`` images wait in the queue (further SCREENs
get BUSY) and at most the pipeline's ``queue_limit`` are being screened; the frames being received
on all connections together hold at most
``max_inflight_bytes`` (a frame that does not fit gets BUSY from its header), and at most
``max_connections`` connections are served (further ones get BUSY and are closed). A connection
that sends nothing within ``handshake_timeout``, stays silent for ``idle_timeout`` or sends
``max_consecutive_errors`` bad frames in a row is closed, so idle or hostile peers cannot hold the
connection slots or turn junk into a flood of ERROR replies.

Durability without a disk write on the way of every image: a request's result is committed before
its RESULT is sent, and the request itself (metadata and image) is journalled by the journal writer
when it is not screened within ``journal_after`` seconds of its acceptance, and in any case before a
TIMEOUT (which tells the camera "it stays queued") or a shutdown leaves it unscreened. A crash can
therefore only lose a request the server never answered, which the camera sends again (same id). A
request screened in time is never journalled: a 9 MB raw frame's journal and drop cost more than
its screening (BENCHMARKS.md "Throughput").

A raw frame passed by file descriptor (protocol 1.2, Unix sockets on Linux) is screened from a
read-only mapping of the sender's sealed memfd, never copied: the transport holds the descriptors that
come with a frame's bytes, the connection loop hands them to that frame's message (or closes them with
a frame it refuses), and :meth:`handle` closes every one of them whatever its reply. The mapping keeps
a descriptor of its own (CPython's mmap holds a duplicate) until the worker lets the image go once its
result is stored: one descriptor per frame by fd queued or being screened, bounded by the queue.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from edge_retina import __version__
from edge_retina.pipeline import ScreeningPipeline
from edge_retina.preprocess.raw import PIXEL_FORMATS, RawFrame
from edge_retina.screener import Screener
from edge_retina.selftest import bundle_selftest
from edge_retina.wording import plural

from .protocol import (
    DEFAULT_MAX_PAYLOAD,
    MINOR_VERSION,
    SUPPORTED_VERSIONS,
    ByteBudget,
    ErrorCode,
    FrameParser,
    Message,
    MessageType,
    ProtocolError,
    encode_message,
    error_message,
)
from .screen_request import BODY_TRANSPORTS, FD_BODY, IMAGE_FORMATS, request_id_of, validate_screen
from .store import ResultStore, StoredRequest, now_us
from .transports import FdsDropped, Listener, Stream, TooManyFds, descriptor_use, map_sealed_frame

log = logging.getLogger("edge_retina.bridge")


@dataclass
class BridgeConfig:
    queue_capacity: int = 8
    request_timeout: float = 30.0  # seconds a SCREEN waits for its result before ERROR timeout
    frame_timeout: float = 5.0  # seconds a started frame may stall before ERROR truncated
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_connections: int = 16
    busy_retry_ms: int = 200
    max_inflight_bytes: int | None = None  # frames being received, all connections; None: 4 x max_payload
    handshake_timeout: float = 10.0  # seconds a new connection has to start sending
    idle_timeout: float = 120.0  # seconds a connection may stay silent between requests
    max_consecutive_errors: int = 8  # bad frames in a row before a socket is closed (serial: ERRORs stop)
    workers: int | None = None  # decode/preprocess threads; None: the device profile's or one per core
    journal_after: float = 0.5  # seconds an accepted request may go unscreened before it is journalled

    @property
    def inflight_limit(self) -> int:
        return max(self.max_payload, self.max_inflight_bytes or 4 * self.max_payload)


class _ConnectionGuard:
    """The deadlines and the bad-frame count of one connection (sockets only have deadlines: a
    serial line is one camera and has no connection to close)."""

    def __init__(self, config: BridgeConfig, deadlines: bool):
        self.config = config
        self.deadlines = deadlines
        self.opened = self.last_byte = time.monotonic()
        self.greeted = False  # a byte has arrived
        self.bad_in_a_row = 0

    def heard(self) -> None:
        self.greeted, self.last_byte = True, time.monotonic()

    def valid_frame(self) -> None:
        self.bad_in_a_row = 0
        self.heard()

    def bad_frame(self, exc: ProtocolError) -> tuple[bool, bool]:
        """(answer it with an ERROR, close the connection after that)."""
        if exc.code is ErrorCode.BUSY:  # the server's state, not the peer's fault
            return True, False
        self.bad_in_a_row += 1
        limit = self.config.max_consecutive_errors
        return self.bad_in_a_row <= limit, self.deadlines and self.bad_in_a_row >= limit

    def expired(self) -> str | None:
        """Why the connection is to be closed now, if it is."""
        if not self.deadlines:
            return None
        now = time.monotonic()
        if not self.greeted and now - self.opened > self.config.handshake_timeout:
            return f"nothing sent within {self.config.handshake_timeout:g} s of connecting: closing"
        if now - self.last_byte > self.config.idle_timeout:
            return f"idle for {self.config.idle_timeout:g} s: closing"
        return None


def bundle_id(screener: Screener) -> str:
    manifest = screener.bundle.manifest
    return f"{manifest.model.name}@{hashlib.sha256(manifest.canonical_bytes()).hexdigest()[:12]}"


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def known(value: str) -> Future:
    """A digest already computed, in the form of one being computed."""
    future: Future = Future()
    future.set_result(value)
    return future


@dataclass
class _Job:
    request_id: str
    meta: dict[str, Any]
    image: bytes | memoryview
    digest: Future  # -> the image's sha256 (hex), computed while the image is screened
    accepted_us: int = field(default_factory=now_us)
    journalled: bool = False  # its pending row (with the image) is committed
    accepted_at: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    stored: StoredRequest | None = None

    @property
    def image_sha256(self) -> str:
        return self.digest.result()


class BridgeServer:
    def __init__(
        self,
        screener: Screener,
        store: ResultStore,
        config: BridgeConfig | None = None,
        *,
        selftest: Callable[[Screener], dict[str, Any]] = bundle_selftest,
    ):
        self.screener = screener
        self.store = store
        self.config = config or BridgeConfig()
        self.bundle_id = bundle_id(screener)
        self._selftest = selftest
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._queue: collections.deque[_Job] = collections.deque()
        self._inflight: dict[str, _Job] = {}  # accepted, result not committed yet
        self._to_journal: collections.deque[_Job] = collections.deque()  # accepted, oldest first
        self._screen_lock = threading.Lock()  # the runner is used by one thread at a time
        self._stop = threading.Event()
        self._connections = 0
        self.inflight = ByteBudget(self.config.inflight_limit)
        self._started = time.monotonic()
        self.processed = 0
        self._pipeline = ScreeningPipeline(screener, workers=self.config.workers, contain_errors=True,
                                           engine_lock=self._screen_lock)
        # sha256 of new requests' images, beside their screening: 6 ms for a 9 MB raw frame (hashlib
        # releases the GIL), which would otherwise delay every request's start.
        self._digests = ThreadPoolExecutor(1, thread_name_prefix="bridge-digest")
        self._worker = threading.Thread(target=self._work_loop, name="bridge-worker", daemon=True)
        self._journal = threading.Thread(target=self._journal_loop, name="bridge-journal", daemon=True)
        # Accepted before a crash and not screened yet: screen them first (a capacity overshoot of
        # at most one queue is accepted here, they are already on disk).
        for row in store.pending():
            job = _Job(row.request_id, row.meta, row.image or b"", known(row.image_sha256), row.accepted_us,
                       journalled=True)
            self._inflight[job.request_id] = job
            self._queue.append(job)
        self._worker.start()
        self._journal.start()

    # -- lifecycle -----------------------------------------------------------------------------
    def serve(self, listeners: list[Listener]) -> None:
        """Accept connections on every listener until :meth:`stop`."""
        threads = [threading.Thread(target=self._accept_loop, args=(listener,), daemon=True) for listener in listeners]
        for t in threads:
            t.start()
        try:
            self._stop.wait()
        finally:
            for t in threads:
                t.join()
            for listener in listeners:
                listener.close()

    def serve_stream(self, stream: Stream) -> None:
        """Serve one stream (a serial line) until it ends or :meth:`stop`."""
        try:
            self._connection_loop(stream, deadlines=False)
        finally:
            stream.close()

    def stop(self) -> None:
        # Only sets the event (no lock): this runs in signal handlers, possibly while the interrupted
        # thread holds the server's lock. The worker notices within its wait timeout.
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Stop; what is being screened is finished, what still waits is journalled (screened at the next start)."""
        self.stop()
        self._worker.join()
        self._journal.join()
        self._pipeline.close()
        self._digests.shutdown()

    # -- connections ---------------------------------------------------------------------------
    def _accept_loop(self, listener: Listener) -> None:
        while not self._stop.is_set():
            stream = listener.accept()
            if stream is None:
                continue
            with self._lock:
                admitted = self._connections < self.config.max_connections
                self._connections += admitted
            if not admitted:
                self._send(stream, error_message(
                    ErrorCode.BUSY, "too many connections", retry_after_ms=self.config.busy_retry_ms))
                stream.close()
                continue
            threading.Thread(target=self._serve_connection, args=(stream,), daemon=True).start()

    def _serve_connection(self, stream: Stream) -> None:
        try:
            self._connection_loop(stream)
        finally:
            stream.close()
            with self._lock:
                self._connections -= 1

    def _connection_loop(self, stream: Stream, *, deadlines: bool = True) -> None:
        parser = FrameParser(self.config.max_payload, self.inflight)
        try:
            self._converse(stream, parser, _ConnectionGuard(self.config, deadlines))
        finally:
            parser.discard()  # gives back what a half-received frame holds of the byte budget

    def _converse(self, stream: Stream, parser: FrameParser, guard: _ConnectionGuard) -> None:
        while not self._stop.is_set():
            start = parser.consumed
            try:
                message = parser.next()
            except ProtocolError as exc:
                close_fds(stream.take_fds(start, parser.consumed))  # those of the bytes refused
                if not self._refuse(stream, guard, exc):
                    return
                continue
            if message is not None:
                guard.valid_frame()
                if not self._send(stream, self.handle(message, stream.take_fds(start, parser.consumed))):
                    return
                guard.heard()  # a long SCREEN is not idleness
                continue
            if (why := guard.expired()) is not None:
                log.info("%s: %s", stream.name, why)
                self._send(stream, error_message(ErrorCode.TIMEOUT, why))
                return
            try:
                data = stream.read()
            except TooManyFds as exc:
                # Dropped descriptors may be the server's state (a full descriptor table): say how full.
                state = f"; {descriptor_use()}" if isinstance(exc, FdsDropped) else ""
                log.warning("%s: %s%s", stream.name, exc, state)
                self._send(stream, error_message(ErrorCode.BAD_REQUEST, str(exc)))
                return
            if data is None:
                if parser.pending and time.monotonic() - guard.last_byte > self.config.frame_timeout:
                    parser.discard()
                    # The stalled frame began at ``start`` (``next`` consumed nothing) and its bytes up to
                    # the new ``consumed`` are dropped: so are the descriptors that came with them.
                    close_fds(stream.take_fds(start, parser.consumed))
                    stalled = ProtocolError(ErrorCode.TRUNCATED, "the frame stopped before its end")
                    if not self._refuse(stream, guard, stalled):
                        return
                continue
            if not data:
                return
            parser.feed(data)
            guard.heard()

    def _refuse(self, stream: Stream, guard: _ConnectionGuard, exc: ProtocolError) -> bool:
        """Answer a bad frame (unless the peer has had its share of ERRORs); False: close the connection."""
        log.warning("%s: %s (%s)", stream.name, exc.code.value, exc)
        answer, close = guard.bad_frame(exc)
        if answer and not self._send(stream, self._error_reply(exc)):
            return False
        return not close

    @staticmethod
    def _send(stream: Stream, message: Message) -> bool:
        try:
            stream.write(encode_message(message))
            return True
        except OSError as exc:
            log.info("%s: peer gone (%s)", stream.name, exc)
            return False

    # -- messages ------------------------------------------------------------------------------
    def handle(self, message: Message, fds: list[int] | None = None) -> Message:
        """The reply to one decoded request message. ``fds``: the file descriptors that came with its
        frame on a connection that passes them (a Unix socket), None on one that does not (TCP, a
        serial line); every one is closed here, whatever the reply."""
        try:
            fd = frame_fd(message, fds)
            if message.type is MessageType.HELLO:
                return self._hello(message.meta, passes_fds=fds is not None)
            if message.type is MessageType.STATUS:
                return Message(MessageType.STATUS, self.status())
            if message.type is MessageType.SELFTEST:
                return self._run_selftest()
            if message.type is MessageType.SCREEN:
                return self._screen(message, fd)
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"{message.type.name} is sent by the server, not to it")
        except ProtocolError as exc:
            return self._error_reply(exc)
        except Exception as exc:  # a bug must cost one request, never the connection or the server
            log.exception("internal error handling %s", message.type.name)
            return error_message(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}",
                                 request_id=message.meta.get("request_id") if isinstance(message.meta, dict) else None)
        finally:
            close_fds(fds)

    def _error_reply(self, exc: ProtocolError) -> Message:
        busy = {"retry_after_ms": self.config.busy_retry_ms} if exc.code is ErrorCode.BUSY else {}
        return error_message(exc.code, str(exc), request_id=exc.request_id, **busy)

    def _hello(self, meta: dict[str, Any], *, passes_fds: bool) -> Message:
        offered = meta.get("versions", [1])
        if not isinstance(offered, list):
            raise ProtocolError(ErrorCode.BAD_REQUEST, "HELLO 'versions' must be a list of integers")
        common = [v for v in offered if isinstance(v, int) and v in SUPPORTED_VERSIONS]
        if not common:
            raise ProtocolError(ErrorCode.UNSUPPORTED_VERSION,
                                f"no common protocol version: offered {offered}, supported {list(SUPPORTED_VERSIONS)}")
        return Message(MessageType.HELLO, {
            "version": max(common),
            "minor_version": MINOR_VERSION,
            "server": f"edge-retina {__version__}",
            "bundle_id": self.bundle_id,
            "conditions": list(self.screener.conditions),
            "max_payload": self.config.max_payload,
            "formats": list(IMAGE_FORMATS),
            "pixel_formats": list(PIXEL_FORMATS),
            # 1.2: how a SCREEN's image may travel; a descriptor only over a Unix socket.
            "body_transports": [t for t in BODY_TRANSPORTS if passes_fds or t != FD_BODY],
        })

    def status(self) -> dict[str, Any]:
        with self._lock:
            depth, inflight, connections = len(self._queue), len(self._inflight), self._connections
        worker_alive = self._worker.is_alive() and self._journal.is_alive()
        return {
            "health": "ok" if worker_alive and not self._stop.is_set() else "degraded",
            "bundle_id": self.bundle_id,
            "queue_depth": depth,
            "queue_capacity": self.config.queue_capacity,
            "in_flight": inflight,
            "connections": connections,
            "processed": self.processed,
            "uptime_s": round(time.monotonic() - self._started, 3),
        }

    def _run_selftest(self) -> Message:
        start = time.perf_counter()
        with self._screen_lock:
            outcome = self._selftest(self.screener)
        return Message(MessageType.SELFTEST, {
            **outcome, "bundle_id": self.bundle_id, "ms": round((time.perf_counter() - start) * 1e3, 3)})

    def _screen(self, message: Message, fd: int | None = None) -> Message:
        """``fd``: the memfd holding the image of a SCREEN with body fd (None: the image is the body)."""
        if fd is None:
            image = message.body
        else:
            try:
                image = map_sealed_frame(fd, self.config.max_payload)
            except ProtocolError as exc:  # the memfd's fault: the ERROR names the request it came with
                raise ProtocolError(exc.code, str(exc), request_id=request_id_of(message.meta)) from None
        meta = validate_screen(message.meta, image)
        request_id = meta["request_id"]
        # A request id seen for the first time (the usual case) is queued at once, its image's sha256
        # computed while it is screened; a known one (a retry) must first show the same image.
        with self._lock:
            first_time = request_id not in self._inflight and self.store.get(request_id) is None
            if first_time:
                job = self._enqueue(request_id, meta, image, None)
        duplicate = False
        if not first_time:
            sha = sha256_hex(image)
            with self._lock:
                job = self._inflight.get(request_id)
            if job is not None:
                job.digest.result()  # wait for the first image's digest (may still be computing) unlocked
            with self._lock:
                job = self._inflight.get(request_id)
                stored = self.store.get(request_id) if job is None else None
                known_sha = job.image_sha256 if job is not None else stored.image_sha256 if stored is not None else sha
                if known_sha != sha:
                    raise ProtocolError(ErrorCode.ID_CONFLICT,
                                        f"request id {request_id!r} was already used for a different image",
                                        request_id=request_id)
                if stored is not None and stored.state == "done":
                    return result_message(stored, duplicate=True)
                duplicate = job is not None
                if job is None:
                    job = self._enqueue(request_id, meta, image, sha)
        del image  # the job's now: the worker lets it go once it is screened, off this reply's path
        if not job.done.wait(self.config.request_timeout):
            self._wait_journalled(job)
            raise ProtocolError(
                ErrorCode.TIMEOUT,
                f"not screened within {self.config.request_timeout:g} s; it stays queued: retry the same request id",
                request_id=request_id,
            )
        assert job.stored is not None
        return result_message(job.stored, duplicate=duplicate)

    def _enqueue(self, request_id: str, meta: dict[str, Any], image: bytes | memoryview, sha: str | None) -> _Job:
        """(Called holding the lock.) Queue a new request; BUSY when the queue is full or the server is
        stopping (its worker and journal are gone: the request would be neither screened nor stored)."""
        if self._stop.is_set():
            raise ProtocolError(ErrorCode.BUSY, "the server is stopping", request_id=request_id)
        if len(self._queue) >= self.config.queue_capacity:
            raise ProtocolError(ErrorCode.BUSY, "the screening queue is full", request_id=request_id)
        job = _Job(request_id, meta, image, known(sha) if sha is not None else self._digests.submit(sha256_hex, image))
        self._inflight[request_id] = job
        self._queue.append(job)
        self._to_journal.append(job)
        self._work.notify_all()
        return job

    # -- the worker ----------------------------------------------------------------------------
    def _jobs(self) -> Iterator[_Job]:
        """Queued jobs, oldest first, as the pipeline takes them (on its feeder thread), until stop."""
        while True:
            with self._work:
                while not self._queue and not self._stop.is_set():
                    self._work.wait(timeout=0.2)
                if self._stop.is_set():
                    return
                job = self._queue.popleft()
            yield job

    def _work_loop(self) -> None:
        screened = self._pipeline.run(self._jobs(), source=lambda job: image_source(job.meta, job.image),
                                      name=lambda job: job.request_id)
        for job, result in screened:
            outcome = {**result.to_dict(), "bundle_id": self.bundle_id}
            stored = self.store.settle(job.request_id, job.image_sha256, job.meta, job.accepted_us, outcome)
            with self._work:
                self._inflight.pop(job.request_id, None)
                self.processed += 1
                job.stored = stored
                job.done.set()
                self._work.notify_all()  # the journal writer may be waiting on this job
            # Not needed once the result is stored: let it go now, not when the pipeline lets go of the
            # job, and here, beside the RESULT being sent (a frame passed by fd is a mapping, which
            # holds a descriptor; unmapping a 9 MB one takes about 0.5 ms).
            job.image = b""

    # -- the journal writer ----------------------------------------------------------------------
    def _journal_loop(self) -> None:
        """Journal each accepted request not screened within ``journal_after`` (all of them at stop)."""
        while True:
            with self._work:
                job = self._next_to_journal()
                if job is None:
                    return
                image = job.image  # under the lock: the worker drops it once the result is stored
            if self.store.accept(job.request_id, job.image_sha256, job.meta, image, accepted_us=job.accepted_us):
                log.info("%s: not screened within %g s: journalled", job.request_id, self.config.journal_after)
            with self._work:
                job.journalled = True
                self._work.notify_all()

    def _next_to_journal(self) -> _Job | None:
        """(Called holding the lock.) The next job to write, once it is due; None when stopped and done."""
        while True:
            while self._to_journal and self._to_journal[0].done.is_set():
                self._to_journal.popleft()  # screened in time: never written
            stopping = self._stop.is_set()
            if not self._to_journal:
                if stopping:
                    return None
                self._work.wait(timeout=0.2)
                continue
            head = self._to_journal[0]
            wait = head.accepted_at + self.config.journal_after - time.monotonic()
            if wait <= 0 or stopping:
                return self._to_journal.popleft()
            self._work.wait(timeout=min(wait, 0.2))

    def _wait_journalled(self, job: _Job) -> None:
        """Until ``job`` is on disk (journalled or its result committed)."""
        with self._work:
            while not (job.journalled or job.done.is_set()) and self._journal.is_alive():
                self._work.wait(timeout=0.2)


def frame_fd(message: Message, fds: list[int] | None) -> int | None:
    """The memfd holding the image of ``message``, a SCREEN with body fd, from the descriptors that came
    with its frame (``fds``, see :meth:`BridgeServer.handle`); None for any other message. A
    ``bad_request`` when they do not match what the message declares, or when it declares no raw frame
    with ``pixel_format`` (all of it metadata: refused before the memfd is mapped)."""
    by_fd = message.type is MessageType.SCREEN and message.meta.get("body") == FD_BODY
    came = len(fds or ())

    def refusal(text: str) -> ProtocolError:
        # The request id only here: finding it validates the whole metadata, which validate_screen does anyway.
        return ProtocolError(ErrorCode.BAD_REQUEST, text, request_id=request_id_of(message.meta))

    if not by_fd:
        if came:
            raise refusal(f"{plural(came, 'file descriptor')} came with a {message.type.name} message, which "
                          f"takes none (only a SCREEN with body fd takes one)")
        return None
    if fds is None:
        raise refusal("body fd: this connection passes no file descriptors (only a Unix socket on Linux does); "
                      "send the frame as the body")
    if came != 1:
        raise refusal(f"a SCREEN with body fd takes one file descriptor (a sealed memfd); {came or 'none'} came "
                      f"with it")
    if message.body:
        raise refusal(f"a SCREEN with body fd has its image in the file descriptor, not in its frame "
                      f"({len(message.body)} bytes there)")
    if not (message.meta.get("format") == "raw" and "pixel_format" in message.meta):
        raise refusal("body fd carries a raw frame: format raw with pixel_format, width and height")
    return fds[0]


def close_fds(fds: list[int] | None) -> None:
    """Close descriptors taken from a stream (None: a stream that passes none)."""
    for fd in fds or ():
        os.close(fd)


def image_source(meta: dict[str, Any], image: bytes | memoryview) -> bytes | memoryview | RawFrame:
    if meta["format"] != "raw":
        return image
    if "pixel_format" in meta:
        return RawFrame(image, meta["pixel_format"], meta["width"], meta["height"], meta["stride"])
    shape = meta["shape"]  # protocol 1.0: [height, width] or [height, width, 1|3], rows without padding
    return RawFrame(image, "rgb8" if shape[2:] == [3] else "gray8", shape[1], shape[0])


def result_message(stored: StoredRequest, *, duplicate: bool) -> Message:
    return Message(MessageType.RESULT, {**stored.record(), "duplicate": duplicate})
