"""
pytest glue for the trial test classes.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _workInTemporaryDirectory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Run every test in its own directory: trial's C{mktemp()} and hypothesis
    write relative to the working directory, which would otherwise be the
    checkout.
    """
    monkeypatch.chdir(tmp_path)
