"""The ``--trusted-keys DIR`` option of every command that checks a bundle's signature (``screen``,
``bundle verify|install|start``, ``bridge serve|hotfolder``): one name, type and help for all.

It lives beside ``signing``, not in ``edge_retina.cli``, because the firmware bridge's commands use it
and the bridge may not import the command line (pyproject.toml's import-linter contracts). It imports
click only: ``signing`` (and ``cryptography``) load when a command reads the keys.
"""
from __future__ import annotations

from pathlib import Path

import click


def trusted_keys_option(*, required: bool = False):
    """``--trusted-keys DIR``, passed to the command as ``trusted_dir`` (a Path, or None when it is
    optional and not given); the command reads it with ``signing.TrustedKeys.from_directory``."""
    return click.option("--trusted-keys", "trusted_dir", type=click.Path(path_type=Path), required=required,
                        metavar="DIR", help="Accept only a bundle signed by a key in this directory of *.pub keys.")
