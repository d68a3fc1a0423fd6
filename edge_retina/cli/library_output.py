"""What third-party libraries may print while a command runs: nothing, unless ``-v``.

A host command's own progress lines are its output. NNCF's progress bars and INFO lines, ONNX
Runtime's C++ warnings and Hugging Face's download bars would interleave with them (and run past 80
columns); ``-v`` shows them all, with Python logging at INFO. This module is the one place that
decides it: ``configure`` when the options are parsed, ``quiet_libraries`` around a host command.
The bridge's commands log lines of their own, so they pass only our loggers' records to stderr
(firmware_bridge.cli, which may not import this module); with -v, ``configure`` has set up logging
for every logger before they run.

Our own warnings (a signed bundle's manifest edited since, an engine cache that cannot be written)
are log records, so that a library user's logging shows them with the rest; with logging not set up
(every command but the bridge's, without -v) Python's handler of last resort prints them, as a bare
line however long. ``configure`` replaces that handler with one that prints them as our lines for
people are: "warning: ..." on stderr, wrapped to the terminal.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Iterator

from edge_retina import LOG_FORMAT
from edge_retina.command_error import print_labelled

#: The packages whose loggers are ours (pyproject.toml's importlinter root packages).
OUR_PACKAGES = ("edge_retina", "converters", "calibration", "devices", "firmware_bridge")


class _LastResortLines(logging.Handler):
    """Records no handler took (warnings and errors), each as one "warning:"/"error:" line; another
    library's are prefixed with its logger's name, so that they are not read as ours."""

    def __init__(self):
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            ours = record.name.split(".")[0] in OUR_PACKAGES
            message = self.format(record) if ours else f"{record.name}: {self.format(record)}"
            print_labelled("warning" if record.levelno < logging.ERROR else "error", message)
        except Exception:
            self.handleError(record)


def configure(verbose: bool) -> None:
    """Runs while the options are parsed, before a host command's modules are imported: model-loading
    progress bars (Hugging Face) read their switch at import time."""
    logging.lastResort = _LastResortLines()
    if verbose:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    else:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Third-party logging, warnings and progress bars off inside the block; our own output (click,
    and rich consoles of our own) unchanged."""
    import onnxruntime  # a base dependency, imported when a host command runs rather than at every start
    import rich

    # NNCF's progress bars (nncf.common.logging.track_progress) draw on rich's global console and
    # NNCF has no switch for them; our commands print through Console instances of their own.
    global_console = rich.get_console()
    was_quiet = global_console.quiet
    global_console.quiet = True
    # logging.disable, not logger levels: NNCF resets its logger's level when it is imported.
    logging.disable(logging.INFO)
    # ONNX Runtime's own (C++) warnings bypass Python logging: errors only.
    onnxruntime.set_default_logger_severity(3)
    try:
        with warnings.catch_warnings():  # a library's deprecation notes are for its callers' developers
            warnings.simplefilter("ignore")
            yield
    finally:
        global_console.quiet = was_quiet
        logging.disable(logging.NOTSET)
        onnxruntime.set_default_logger_severity(2)  # its default: warnings
