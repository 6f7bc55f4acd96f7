"""
pytest glue for the trial test classes: each test runs in a directory of
its own, and a run leaves nothing in the checkout.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

# Hypothesis keeps no examples between runs: a failure prints the example
# to reproduce it.
settings.register_profile("turnrelay", database=None)
settings.load_profile("turnrelay")


def pytest_configure(config: pytest.Config) -> None:
    """
    Give hypothesis's caches (which it would otherwise keep in
    C{.hypothesis/} in the directory pytest started in) a temporary
    directory of this run.
    """
    home = tempfile.mkdtemp(prefix="turnrelay-hypothesis-")
    set_hypothesis_home_dir(home)
    config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))


@pytest.fixture(autouse=True)
def _workInTemporaryDirectory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Run every test in its own directory: trial's C{mktemp()} writes
    relative to the working directory, which would otherwise be the
    checkout.
    """
    monkeypatch.chdir(tmp_path)
