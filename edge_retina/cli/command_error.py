"""``CommandError``: click's way out of a command (``ClickException``), printed the way our lines for
people are: one "error:" line on stderr, wrapped to the terminal (click prints it as one line, however
long), with paths and messages whole (no rich markup)."""
from __future__ import annotations

import click
from rich.console import Console
from rich.text import Text

from edge_retina.console_tables import print_wrapped

#: The shell's status for a command stopped by SIGINT (128 + 2): scripts tell Ctrl-C from a failure.
EXIT_INTERRUPTED = 130


class CommandError(click.ClickException):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        print_wrapped(Console(stderr=True), Text.assemble(("error:", "red"), f" {self.format_message()}"))
