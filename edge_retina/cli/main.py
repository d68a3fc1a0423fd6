"""The ``edge-retina`` command: a thin layer over the library API.

Device commands (screen, bundle) load eagerly-light runtime modules. Host commands (demo, convert...)
live in the host packages and are imported only when invoked, so the runtime never imports them and a
device install without the ``convert`` extra gets a one-line "install the extra" message instead of a
traceback.
"""
from __future__ import annotations

import importlib

import click

from edge_retina import __version__
from edge_retina.errors import EdgeRetinaError

# name -> ("module:attribute", extra that module needs, or None for the runtime)
COMMANDS: dict[str, tuple[str, str | None]] = {
    "screen": ("edge_retina.cli.screen:screen", None),
    "bundle": ("edge_retina.cli.bundle:bundle", None),
    "devices": ("edge_retina.cli.devices:devices_group", None),
    "bridge": ("firmware_bridge.cli:bridge", None),
    "bench": ("edge_retina.cli.bench:bench", None),
    "archive": ("edge_retina.archive_screening.cli:archive", "archive"),
    "adapt": ("edge_retina.cli.adapt:adapt", None),
    "demo": ("converters.commands.demo:demo", "convert"),
    "convert": ("converters.commands.convert:convert", "convert"),
    "prompts": ("converters.commands.prompts:prompts", "convert"),
    "distill": ("converters.commands.distill:distill", "convert"),
    "calibrate": ("converters.commands.calibrate:calibrate", "convert"),
}

# Modules whose absence means "the extra is not installed" rather than a bug.
_EXTRA_MODULES = {"torch", "onnx", "onnxscript", "nncf", "openvino", "safetensors", "timm", "sklearn", "skimage",
                  "modelopt", "transformers", "open_clip", "matplotlib", "tqdm", "ray", "pyarrow"}


class LazyGroup(click.Group):
    """A click group that imports each subcommand only when it is run or its help is asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, extra = COMMANDS[name]
        module_name, attribute = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if extra and _is_extra_module(exc):
                return _missing_extra_command(name, extra, exc.name)
            raise
        command = getattr(module, attribute)
        return _guarded(command, name, extra) if extra else command


def _is_extra_module(exc: ModuleNotFoundError) -> bool:
    return bool(exc.name) and exc.name.split(".")[0] in _EXTRA_MODULES


def _missing_extra_message(name: str, extra: str, missing: str) -> str:
    return (f"'edge-retina {name}' runs on the host and needs the '{extra}' extra ({missing} is not installed): "
            f"pip install 'edge-retina[{extra}]'")


def _missing_extra_command(name: str, extra: str, missing: str) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   help=f"(needs the '{extra}' extra: pip install 'edge-retina[{extra}]')")
    def unavailable(**_: object) -> None:
        raise click.ClickException(_missing_extra_message(name, extra, missing))

    return unavailable


def _guarded(command: click.Command, name: str, extra: str) -> click.Command:
    """Host commands import their heavy dependencies when they run: turn a missing one into the
    "install the extra" message there too."""
    invoke = command.invoke

    def guarded_invoke(ctx: click.Context):
        try:
            return invoke(ctx)
        except ModuleNotFoundError as exc:
            if _is_extra_module(exc):
                raise click.ClickException(_missing_extra_message(name, extra, exc.name)) from None
            raise

    command.invoke = guarded_invoke  # type: ignore[method-assign]
    return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-retina")
def cli() -> None:
    """Retinal foundation models on screening devices: convert on the host, screen offline on the device."""


def main() -> None:
    try:
        cli(standalone_mode=True)
    except EdgeRetinaError as exc:  # an error raised outside a command's own handling
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
