"""Every command's --help, and a refused or interrupted command's message, fit an 80-column terminal."""
from __future__ import annotations

import click
from narrow_terminal import COLUMNS, narrow_runner, unwrapped, widest_line

from edge_retina.cli.main import cli


def command_paths(group: click.Group, ctx: click.Context, prefix: tuple[str, ...] = ()):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from command_paths(command, click.Context(command, parent=ctx), (*prefix, name))


def test_every_help_fits_80_columns():
    runner = narrow_runner()
    paths = list(command_paths(cli, click.Context(cli)))
    assert ("bundle", "install") in paths and ("cache", "prune") in paths
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert widest_line(result.output) <= COLUMNS, (path, result.output)


def test_an_error_line_wraps_to_the_terminal():
    result = narrow_runner().invoke(cli, ["devices", "show", "no-such-profile"])
    assert result.exit_code == 1 and widest_line(result.output) <= COLUMNS, result.output
    assert unwrapped("error: unknown device profile 'no-such-profile'; known profiles:") in unwrapped(result.output)


def test_ctrl_c_outside_a_commands_own_handling_exits_130_in_one_line(monkeypatch):
    """Ctrl-C while a command loads (a bundle, an engine): "interrupted", and the shell's status for
    SIGINT, not click's "Aborted!" with 1, the status of a failure."""
    import devices

    def interrupted(root):
        raise KeyboardInterrupt

    monkeypatch.setattr(devices, "detect", interrupted)
    result = narrow_runner().invoke(cli, ["devices", "detect"])
    assert result.exit_code == 130 and "interrupted (Ctrl-C)" in result.output, result.output
    assert "Aborted" not in result.output and "Traceback" not in result.output
