"""Every command's --help, and a refused or interrupted command's message, fit an 80-column terminal;
an option several commands share reads the same in each."""
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


def test_every_trusted_keys_option_is_the_same_option():
    """--trusted-keys: one help text, one type and metavar, wherever a bundle's signature is checked
    (required only by `bundle install`)."""
    ctx = click.Context(cli)
    options = {}
    for path in command_paths(cli, ctx):
        command = ctx.command
        for name in path:
            command = command.get_command(click.Context(command), name)
        for param in command.params:
            if "--trusted-keys" in param.opts:
                options[" ".join(path)] = param
    assert set(options) == {"screen", "bundle verify", "bundle install", "bundle start", "bridge serve",
                            "bridge hotfolder"}
    shapes = {(p.name, p.help, p.metavar, repr(sorted(vars(p.type).items()))) for p in options.values()}
    assert len(shapes) == 1, shapes
    assert {name for name, p in options.items() if p.required} == {"bundle install"}


def test_an_error_line_wraps_to_the_terminal():
    result = narrow_runner().invoke(cli, ["devices", "show", "no-such-profile"])
    assert result.exit_code == 2 and widest_line(result.output) <= COLUMNS, result.output
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
