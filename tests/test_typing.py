# The vault is the part that must be right: it type-checks under mypy --strict.

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPOSITORY


def test_vault_passes_mypy_strict():
    completed = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "vault"],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
