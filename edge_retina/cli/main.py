"""The ``edge-retina`` command: a thin layer over the library API.

Device commands (screen, bundle) load eagerly-light runtime modules. Host commands (demo, convert...)
live in the host packages and are imported only when invoked, so the runtime never imports them and a
device install without the ``convert`` extra gets a one-line "install the extra" message instead of a
traceback.
"""
from __future__ import annotations

import contextlib
import importlib
import sys

import click
from rich.console import Console

from edge_retina import __version__
from edge_retina.cli import library_output
from edge_retina.command_error import EXIT_INTERRUPTED, fail
from edge_retina.console_tables import print_wrapped
from edge_retina.errors import EdgeRetinaError, MissingExtraError
from edge_retina.extras import import_for, missing_extra

VERBOSE_KEY = "edge_retina.verbose"

# name -> ("module:attribute", extra that module needs, or None for the runtime)
COMMANDS: dict[str, tuple[str, str | None]] = {
    "screen": ("edge_retina.cli.screen:screen", None),
    "bundle": ("edge_retina.cli.bundle:bundle", None),
    "devices": ("edge_retina.cli.devices:devices_group", None),
    "bridge": ("firmware_bridge.cli:bridge", None),
    "bench": ("edge_retina.cli.bench:bench", None),
    "archive": ("edge_retina.archive_screening.cli:archive", "archive"),
    "adapt": ("edge_retina.cli.adapt:adapt", None),
    "cache": ("edge_retina.cli.cache:cache_group", None),
    "demo": ("converters.commands.demo:demo", "convert"),
    "convert": ("converters.commands.convert:convert", "convert"),
    "prompts": ("converters.commands.prompts:prompts", "convert"),
    "distill": ("converters.commands.distill:distill", "convert"),
    "calibrate": ("converters.commands.calibrate:calibrate", "convert"),
}


class LazyGroup(click.Group):
    """A click group that imports each subcommand only when it is run or its help is asked for."""

    def invoke(self, ctx: click.Context):
        # Ctrl-C where a command does not handle it (loading a bundle or an engine, a benchmark): one
        # line and the shell's status for SIGINT, where click would say "Aborted!" and exit 1, the
        # status of a failure. (`screen` handles it itself, keeping what it screened.)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            print_wrapped(Console(stderr=True), "\ninterrupted (Ctrl-C)")
            ctx.exit(EXIT_INTERRUPTED)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, extra = COMMANDS[name]
        module_name, attribute = target.split(":")
        if extra is None:
            return getattr(importlib.import_module(module_name), attribute)
        try:
            module = import_for(module_name, f"'edge-retina {name}'", extra)
        except MissingExtraError as exc:
            return _missing_extra_command(name, extra, exc)
        return _guarded(getattr(module, attribute), name, extra)


def _missing_extra_command(name: str, extra: str, error: MissingExtraError) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   help=f"(needs the '{extra}' extra: pip install 'edge-retina[{extra}]')")
    def unavailable(**_: object) -> None:
        fail(error)

    return unavailable


def _guarded(command: click.Command, name: str, extra: str) -> click.Command:
    """Host commands import their heavy dependencies when they run: turn a missing one into the
    "install the extra" message there too, and a user's mistake (EdgeRetinaError) into one line;
    both refuse the command (exit 2), as the runtime commands refuse a bundle.
    Their libraries' logging and progress bars are silenced unless -v (``library_output``)."""
    invoke = command.invoke

    def guarded_invoke(ctx: click.Context):
        verbose = is_verbose(ctx)
        try:
            with contextlib.nullcontext() if verbose else library_output.quiet_libraries():
                return invoke(ctx)
        except ModuleNotFoundError as exc:
            error = missing_extra(exc, f"'edge-retina {name}'", extra)
            if error is None:
                raise
            fail(error)
        except EdgeRetinaError as exc:
            if verbose:
                raise
            fail(exc)

    command.invoke = guarded_invoke  # type: ignore[method-assign]
    return command


def is_verbose(ctx: click.Context) -> bool:
    """Whether ``edge-retina -v`` runs the command of ``ctx``."""
    return bool(ctx.find_root().meta.get(VERBOSE_KEY))


def _set_verbosity(ctx: click.Context, _: click.Parameter, verbose: bool) -> None:
    ctx.meta[VERBOSE_KEY] = verbose
    library_output.configure(verbose)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-retina")
@click.option("-v", "--verbose", is_flag=True, expose_value=False, is_eager=True, callback=_set_verbosity,
              help="Show libraries' log messages, and a traceback with every error.")
def cli() -> None:
    """Retinal foundation models on screening devices: convert on the host, screen offline on the device.

    Exit status, every command: 0 done; 1 it ran and the outcome is a failure (a parity gate
    failed, `bundle verify` found a problem, nothing could be screened); 2 refused before the work
    (an option, a bundle, the input or an output: an "error:" line says why); 130 interrupted
    (Ctrl-C). `bundle install` adds 3: the new bundle failed its self-test and was rolled back.
    """


def main() -> None:
    try:
        cli(standalone_mode=True)
    except EdgeRetinaError as exc:  # an error raised outside a command's own handling
        if "-v" in sys.argv[1:] or "--verbose" in sys.argv[1:]:
            raise
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
