"""The package layering of setup.cfg's import-linter contracts holds (no process package imports
another; product code never imports the paper exchange or the chaos harness)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.proc import REPO, child_env


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).parent / "lint-imports"
    p = subprocess.run([str(lint), "--no-cache"], cwd=REPO, env=child_env(), capture_output=True,
                       text=True, timeout=100)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "0 broken" in p.stdout and "3 kept" in p.stdout
