"""``edge-retina bridge``: serve cameras over a socket, TCP or a serial line; watch a hot folder;
export stored results."""
from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import signal
import sqlite3
import threading
from pathlib import Path

import click

from edge_retina import LOG_FORMAT
from edge_retina.bundle.trusted_keys_option import trusted_keys_option
from edge_retina.command_error import fail
from edge_retina.errors import EdgeRetinaError
from edge_retina.out_paths import unwritable_reason
from edge_retina.preprocess.decode import MIN_SIDE
from edge_retina.preprocess.raw import PIXEL_FORMATS
from edge_retina.screener import Screener
from edge_retina.wording import plural

from .protocol import DEFAULT_MAX_PAYLOAD, MAX_METADATA
from .store import ResultStore, parse_time


def default_store() -> Path:
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "edge-retina" / "bridge.sqlite3"


store_option = click.option(
    "--store", type=click.Path(dir_okay=False, path_type=Path), envvar="EDGE_RETINA_BRIDGE_STORE",
    default=default_store, show_default="$XDG_DATA_HOME/edge-retina/bridge.sqlite3",
    help="SQLite result store (env EDGE_RETINA_BRIDGE_STORE).")


def _open_store(path: Path, *, read_only: bool = False) -> ResultStore:
    """The result store at ``path``, or one message saying why it cannot be opened (a read-only
    folder, a file where a folder should be, a file that is not a SQLite database or, ``read_only``,
    not a result store)."""
    reason = None if read_only else unwritable_reason(path)
    if reason is None:
        try:
            return ResultStore(path, read_only=read_only)
        except (OSError, sqlite3.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
    fail(f"cannot open the result store {path}: {reason}")


def _stop_on_signals(stop) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop())


def _log_to_stderr() -> None:
    """Our log lines on stderr, timestamped: the bridge's INFO lines (a capture screened, a client
    gone) are its output. A library's (pydicom's about a damaged DICOM, which the result reports
    already) only with -v: ``edge-retina -v`` configures logging for every logger first
    (edge_retina.cli.library_output), and then this does nothing. Every logger of ours is named
    under edge_retina."""
    handler = logging.StreamHandler()
    handler.addFilter(lambda record: record.name.partition(".")[0] == "edge_retina")
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, handlers=[handler])


def _open_screener(bundle: Path, backend: str | None, threads: int | None, trusted_dir: Path | None) -> Screener:
    try:
        trusted = None
        if trusted_dir is not None:
            from edge_retina.bundle.signing import TrustedKeys  # cryptography: only when asked

            trusted = TrustedKeys.from_directory(trusted_dir)
        return Screener.from_bundle(bundle, backend=backend, threads=threads, trusted_keys=trusted)
    except EdgeRetinaError as exc:  # exit 2, as `screen` refuses a bundle
        fail(exc)


def _return_freed_frames_to_the_os() -> None:
    """Keep frame-sized buffers out of the heap, so memory freed after a frame leaves the RSS.

    glibc raises its mmap threshold (up to 32 MiB) each time an mmapped block is freed, so after the
    first large frame the next ones come from the per-thread heaps, which keep them after free: the
    server's peak RSS then grows past the bound docs/PROTOCOL.md states. Fixing the threshold at its
    default (128 KiB) disables that adjustment; measured under 16 connections x 16 MiB frames, peak
    RSS 408 -> 288 MiB (BENCHMARKS.md "Reliability"). Other C libraries have no such adjustment.
    """
    m_mmap_threshold = -3  # glibc's <malloc.h>
    try:
        ctypes.CDLL(None).mallopt(m_mmap_threshold, 128 * 1024)
    except (OSError, AttributeError):  # no mallopt: not glibc
        pass


class TcpAddress(click.ParamType):
    """``[HOST:]PORT``, checked when the options are parsed: a typo is one usage error (exit 2)
    before the engine loads."""

    name = "[HOST:]PORT"

    def convert(self, value, param, ctx) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        from .transports import parse_tcp_address

        try:
            return parse_tcp_address(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _socket_folder_exists(ctx: click.Context, param: click.Parameter, path: Path | None) -> Path | None:
    """Before the engine loads: bind would fail later with an ENOENT that names no path."""
    if path is not None and not path.parent.is_dir():
        raise click.BadParameter(f"{path}: no such folder {path.parent}", ctx, param)
    return path


def _open_serial(device: str, baud: int):
    """The port, opened once before the engine loads: a wrong name (or a camera not plugged in)
    is one usage error (exit 2) at start. Once served, a port that disappears is waited for
    (transports.serial_streams): that is a reboot or a cable, not a mistake."""
    from .transports import SerialStream

    try:
        return SerialStream(device, baud)
    except OSError as exc:
        raise click.UsageError(str(exc)) from None


#: Seconds options: a timeout of -1 s (like a queue of 0) would start a server on which every SCREEN fails.
_ABOVE_ZERO = click.FloatRange(min=0, min_open=True)

#: The smallest --max-frame-mb and --max-inflight-mb: a payload that holds the most metadata the
#: protocol allows (after its 4-byte length) and the smallest photo screened, MIN_SIDE px square as a
#: raw frame of the widest pixel format; rounded up to the tenth of a MiB the help and errors show.
#: A smaller limit refuses SCREENs the protocol allows, and one such as 1e-7 MiB is 0 bytes once
#: rounded down to bytes: every frame would be refused.
MIN_FRAME_LIMIT_MB = math.ceil(
    (4 + MAX_METADATA + MIN_SIDE * MIN_SIDE * max(channels for channels, _ in PIXEL_FORMATS.values()))
    / 2**20 * 10) / 10


class _FrameLimitMb(click.FloatRange):
    """MiB of frames, at least MIN_FRAME_LIMIT_MB; NaN and infinity are refused too (they pass a range
    check, and have no number of bytes)."""

    def __init__(self):
        super().__init__(min=MIN_FRAME_LIMIT_MB)

    def convert(self, value, param, ctx) -> float:
        mb = super().convert(value, param, ctx)
        if not math.isfinite(mb):
            self.fail(f"{mb} is not a finite number of MiB", param, ctx)
        return mb


@click.group("bridge")
def bridge() -> None:
    """Connect fundus cameras to the screener (wire protocol v1: docs/PROTOCOL.md)."""


@bridge.command()
@click.option("--bundle", "bundle_path", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), callback=_socket_folder_exists,
              help="Unix domain socket to listen on.")
@click.option("--tcp", "tcp_address", type=TcpAddress(),
              help="TCP address to listen on; the host defaults to 127.0.0.1, port 0 picks a free one.")
@click.option("--serial", "serial_device", metavar="DEV",
              help="Serial device (UART, USB-CDC) to serve; it must open at start, and is waited for "
                   "if it disappears later (a camera reboot, a cable).")
@click.option("--baud", type=click.IntRange(min=1), default=115200, show_default=True)
@store_option
@click.option("--queue", "queue_capacity", type=click.IntRange(min=1), default=8, show_default=True,
              help="Images that may wait; then BUSY.")
@click.option("--timeout", "request_timeout", type=_ABOVE_ZERO, default=30.0, show_default=True,
              help="Seconds per SCREEN.")
@click.option("--frame-timeout", type=_ABOVE_ZERO, default=5.0, show_default=True,
              help="Seconds a frame may stall mid-way.")
@click.option("--max-frame-mb", type=_FrameLimitMb(), default=DEFAULT_MAX_PAYLOAD / 2**20, show_default=True,
              help="Largest payload (MiB).")
@click.option("--max-connections", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--max-inflight-mb", type=_FrameLimitMb(), default=None,
              help="Bytes of frames being received at once, all connections (MiB) [default: 4 x --max-frame-mb].")
@click.option("--idle-timeout", type=_ABOVE_ZERO, default=120.0, show_default=True,
              help="Seconds a silent connection is kept.")
@click.option("--backend", default=None, help="Engine backend of the bundle (default: its best).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Inference threads.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Threads decoding and preprocessing queued images [default: the device profile's, else one per core].")
@click.option("--allow-remote", is_flag=True, help="Allow a TCP address other than loopback.")
@trusted_keys_option()
def serve(bundle_path, socket_path, tcp_address, serial_device, baud, store, queue_capacity, request_timeout,
          frame_timeout, max_frame_mb, max_connections, max_inflight_mb, idle_timeout, backend, threads,
          workers, allow_remote, trusted_dir) -> None:
    """Serve camera requests until SIGTERM/SIGINT.

    Exit status: 0 when stopped, 2 when an option, the bundle or the store is refused, 1 when the
    address cannot be listened on."""
    from .server import BridgeConfig, BridgeServer
    from .transports import is_loopback, serial_streams, tcp_listener, unix_listener

    chosen = [x for x in (socket_path, tcp_address, serial_device) if x]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --socket, --tcp, --serial")
    if tcp_address and not is_loopback(tcp_address[0]) and not allow_remote:
        raise click.UsageError(f"{tcp_address[0]} is not a loopback address: pass --allow-remote to listen on it")
    result_store = _open_store(store)
    _log_to_stderr()
    config = BridgeConfig(queue_capacity=queue_capacity, request_timeout=request_timeout, frame_timeout=frame_timeout,
                          max_payload=int(max_frame_mb * 2**20), max_connections=max_connections,
                          max_inflight_bytes=None if max_inflight_mb is None else int(max_inflight_mb * 2**20),
                          idle_timeout=idle_timeout, workers=workers)
    first_serial = _open_serial(serial_device, baud) if serial_device else None
    _return_freed_frames_to_the_os()
    try:
        screener = _open_screener(bundle_path, backend, threads, trusted_dir)
    except click.ClickException:
        if first_serial is not None:
            first_serial.close()
        raise
    server = BridgeServer(screener, result_store, config)
    _stop_on_signals(server.stop)
    if serial_device:
        where = f"serial:{serial_device}"
    elif tcp_address:
        where = "tcp:%s:%d" % tcp_address
    else:
        where = f"unix:{socket_path}"
    try:
        if first_serial is not None:
            click.echo(f"serving {where} ({server.bundle_id})")
            for stream in serial_streams(first_serial, lambda: server.stopped):
                try:
                    server.serve_stream(stream)
                except OSError as exc:  # unplugged or rebooting camera: open the port again
                    logging.getLogger("edge_retina.bridge").warning("%s: %s", where, exc)
            return
        listener = tcp_listener(*tcp_address) if tcp_address else unix_listener(socket_path)
        # Printed (and flushed) once listening: supervisors and tests wait for this line.
        click.echo(f"listening on {listener.address} ({server.bundle_id})")
        server.serve([listener])
    except OSError as exc:
        fail(f"cannot listen on {where}: {exc.strerror or exc}", exit_code=1)
    finally:
        server.close()
        screener.close()


@bridge.command()
@store_option
@click.option("--since", default="0", show_default=True,
              help="Only results completed after this time (ISO 8601, naive = UTC, or epoch seconds).")
def results(store, since) -> None:
    """Print stored results as JSON lines, oldest first (for syncing once a connection exists)."""
    try:
        since_us = parse_time(since)
    except ValueError:
        raise click.BadParameter(f"{since!r} is not an ISO-8601 time or epoch seconds", param_hint="--since") from None
    if not store.is_file():
        fail(f"no result store at {store}")
    result_store = _open_store(store, read_only=True)
    try:
        for row in result_store.done_since(since_us):
            click.echo(json.dumps(row.record(), separators=(",", ":")))
    finally:
        result_store.close()


@bridge.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--bundle", "bundle_path", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--store", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Journal and result store [default: FOLDER/.edge-retina/journal.sqlite3].")
@click.option("--interval", type=_ABOVE_ZERO, default=1.0, show_default=True, help="Seconds between scans.")
@click.option("--settle", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Seconds a file must be unchanged before screening.")
@click.option("--once", is_flag=True, help="Scan once and exit.")
@click.option("--backend", default=None)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Decode/preprocessing threads for a burst of captures [default: one per core].")
@trusted_keys_option()
def hotfolder(folder, bundle_path, store, interval, settle, once, backend, threads, workers, trusted_dir) -> None:
    """Screen each new capture written to FOLDER once; write IMAGE.result.json beside it.

    Exit status: 0 when stopped (or, with --once, scanned), 1 when --once left a capture without
    its sidecar (unreadable, or the sidecar could not be written: the next scan tries again), 2
    when an option, the bundle or the store is refused."""
    from .hotfolder import HotFolder

    result_store = _open_store(store or folder / ".edge-retina" / "journal.sqlite3")
    _log_to_stderr()
    screener = _open_screener(bundle_path, backend, threads, trusted_dir)
    watcher = HotFolder(screener, result_store, folder, settle_seconds=settle, workers=workers)
    try:
        if once:
            written = watcher.scan_once()
            click.echo(f"{plural(len(written), 'sidecar')} written")
            if watcher.unfinished:
                fail(f"{plural(len(watcher.unfinished), 'capture')} left without a sidecar (see the warnings); "
                     "the next scan tries again", exit_code=1)
            return
        stop = threading.Event()
        _stop_on_signals(stop.set)
        click.echo(f"watching {folder} ({watcher.bundle_id})")
        watcher.run(stop, interval)
    finally:
        watcher.close()
        result_store.close()
        screener.close()
