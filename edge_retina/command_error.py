"""How a command stops on an error: ``CommandError``, click's way out of a command (``ClickException``),
printed the way our lines for people are: one "error:" line on stderr, wrapped to the terminal (click
prints it as one line, however long), with paths and messages whole (no rich markup). ``fail`` raises
it with the status for input a command refuses. It lives outside ``edge_retina.cli`` (an entry point
nothing may import) because the bridge's commands stop the same way."""
from __future__ import annotations

from typing import NoReturn

import click
from rich.console import Console
from rich.text import Text

from edge_retina.console_tables import print_wrapped

#: The shell's status for a command stopped by SIGINT (128 + 2): scripts tell Ctrl-C from a failure.
EXIT_INTERRUPTED = 130
#: A command that cannot run: its bundle, its input or an --out was refused.
EXIT_REFUSED = 2


def print_labelled(label: str, message: str) -> None:
    """One of our lines for people on stderr: "error: ..." (red) or "warning: ..." (yellow), wrapped."""
    print_wrapped(Console(stderr=True), Text.assemble((f"{label}:", "red" if label == "error" else "yellow"),
                                                      f" {message}"))


class CommandError(click.ClickException):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None) -> None:
        print_labelled("error", self.format_message())


def fail(message: object, exit_code: int = EXIT_REFUSED) -> NoReturn:
    """Stop the command with ``message`` (an exception's text, or a sentence) and ``exit_code``."""
    raise CommandError(str(message), exit_code)
