"""The layers hold: pyproject.toml's import-linter contracts (README "Layout") pass."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    # In a child process: import-linter reconfigures logging in the process it runs in, which silenced
    # the loggers of tests that ran after it in the same pytest worker.
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint_imports), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
