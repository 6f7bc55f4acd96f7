"""
The package's metadata and what its sdist carries: the license it declares
is there, the README names every dependency, the version has one source,
and the sdist has no tests (they need a clone).
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import sys
import tarfile
from typing import List

from twisted.trial.unittest import SynchronousTestCase, TestCase

import turnrelay
from tests._processes import SOURCE_ROOT, runToCompletion


def _metadata() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(os.path.join(SOURCE_ROOT, "setup.cfg"))
    return parser


def _lines(value: str) -> List[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def _readme() -> str:
    with open(os.path.join(SOURCE_ROOT, "README.rst")) as f:
        return f.read()


class MetadataTests(SynchronousTestCase):
    """
    C{setup.cfg} against the files it speaks of.
    """

    def setUp(self) -> None:
        self.metadata = _metadata()
        if not self.metadata.has_section("metadata"):
            self.skipTest("no setup.cfg beside turnrelay: not run from a checkout")

    def test_license(self) -> None:
        """
        The LICENSE file holds the license the metadata declares, and the
        classifiers say the same.
        """
        self.assertEqual(self.metadata["metadata"]["license"], "MIT")
        with open(os.path.join(SOURCE_ROOT, "LICENSE")) as f:
            self.assertEqual(f.readline().strip(), "MIT License")
        classifiers = _lines(self.metadata["metadata"]["classifiers"])
        self.assertIn("License :: OSI Approved :: MIT License", classifiers)

    def test_projectURLs(self) -> None:
        """
        The metadata carries project URLs.
        """
        urls = _lines(self.metadata["metadata"]["project_urls"])
        self.assertTrue(urls)
        for line in urls:
            self.assertRegex(line, r"^[^=]+ = https://")

    def test_dependenciesInREADME(self) -> None:
        """
        The README's Dependencies section names every requirement, of the
        package and of its test extra.
        """
        readme = _readme()
        section = readme[readme.index("\nDependencies\n") :].lower()
        requirements = _lines(self.metadata["options"]["install_requires"])
        requirements += _lines(self.metadata["options.extras_require"]["test"])
        for requirement in requirements:
            name = re.split(r"[<>=!~ ]", requirement)[0].lower()
            spellings = {name, name.replace("-", "_"), re.sub(r"\[.*\]", "", name)}
            self.assertTrue(any(s in section for s in spellings), requirement)
        self.assertIn("twisted[conch]", section)
        self.assertIn("prometheus-client", section)

    def test_version(self) -> None:
        """
        The version has one source, C{turnrelay.__version__}.
        """
        self.assertEqual(self.metadata["metadata"]["version"], "attr: turnrelay.__version__")
        self.assertRegex(turnrelay.__version__, r"^\d+\.\d+\.\d+")


class SourceDistributionTests(TestCase):
    """
    The sdist, built from a copy of the checkout.
    """

    timeout = 120

    async def test_contents(self) -> None:
        """
        The sdist carries the license, the README, the example
        configuration and the demo page, and no tests.
        """
        if not os.path.exists(os.path.join(SOURCE_ROOT, "setup.cfg")):
            self.skipTest("no setup.cfg beside turnrelay: not run from a checkout")
        root = os.path.abspath(self.mktemp())
        source, out = os.path.join(root, "source"), os.path.join(root, "out")
        shutil.copytree(
            SOURCE_ROOT,
            source,
            ignore=shutil.ignore_patterns(
                ".*", "_trial_temp*", "*.egg-info", "state", "build", "dist", "__pycache__"
            ),
        )
        os.makedirs(out)
        build = (
            "import sys; from setuptools import build_meta;"
            " print(build_meta.build_sdist(sys.argv[1]))"
        )
        child = await runToCompletion(self, [sys.executable, "-c", build, out], path=source)
        self.assertEqual(child.exitCode, 0, child.errors[-2000:])
        [name] = os.listdir(out)
        with tarfile.open(os.path.join(out, name)) as sdist:
            members = {member.split("/", 1)[1] for member in sdist.getnames() if "/" in member}
        for expected in [
            "LICENSE",
            "README.rst",
            "conf/turnrelay.conf",
            "turnrelay/admin/demo.html",
            "twisted/plugins/turnrelay_plugin.py",
        ]:
            self.assertIn(expected, members)
        self.assertEqual([m for m in members if m.startswith("tests/")], [])
