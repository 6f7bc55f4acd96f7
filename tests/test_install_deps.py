"""
C{tools/install-system-deps}, run against stand-ins for apt-get, systemctl
and dpkg-query that record what they are asked: it installs what is
missing, python3-venv included, with services kept from starting, and
leaves no service of those packages running or enabled.
"""

from __future__ import annotations

import os
import shutil
from typing import List

from twisted.trial.unittest import TestCase

from tests._processes import SOURCE_ROOT, runToCompletion

SCRIPT = os.path.join(SOURCE_ROOT, "tools", "install-system-deps")

# The real programs the script uses besides the stand-ins.
TOOLS = ["sh", "env", "sed", "ls", "chmod", "rm", "cat"]

STAND_INS = {
    "id": "#!/bin/sh\necho 0\n",
    # Debian's python3 without python3-venv: no ensurepip.
    "python3": "#!/bin/sh\nexit 1\n",
    "apt-get": (
        '#!/bin/sh\necho "apt-get $* policy=$(sh "$POLICY_RC_D" >/dev/null 2>&1; echo $?)"'
        ' >> "$LOG"\n'
    ),
    "dpkg-query": (
        "#!/bin/sh\n"
        '[ "$2" = coturn ] || exit 1\n'
        "printf '/etc/default/coturn\\n/lib/systemd/system/coturn.service\\n'\n"
    ),
    # coturn.service runs and is enabled until stopped and disabled.
    "systemctl": (
        "#!/bin/sh\n"
        'echo "systemctl $*" >> "$LOG"\n'
        'case "$1" in\n'
        '  is-active) [ ! -e "$STATE/stopped" ] ;;\n'
        '  is-enabled) [ ! -e "$STATE/disabled" ] ;;\n'
        '  stop) touch "$STATE/stopped" ;;\n'
        '  disable) touch "$STATE/disabled" ;;\n'
        "esac\n"
    ),
    "touch": '#!/bin/sh\n: > "$1"\n',
}


class InstallSystemDepsTests(TestCase):
    """
    C{tools/install-system-deps} with stand-ins on C{PATH}.
    """

    timeout = 60

    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        self.bin = os.path.join(self.root, "bin")
        self.state = os.path.join(self.root, "state")
        os.makedirs(self.bin)
        os.makedirs(self.state)
        for name, text in STAND_INS.items():
            path = os.path.join(self.bin, name)
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o755)
        for name in TOOLS:
            real = shutil.which(name)
            assert real is not None, name
            os.symlink(real, os.path.join(self.bin, name))
        self.log = os.path.join(self.root, "log")
        self.policy = os.path.join(self.root, "policy-rc.d")

    async def runScript(self) -> List[str]:
        env = {
            "PATH": self.bin,
            "LOG": self.log,
            "STATE": self.state,
            "POLICY_RC_D": self.policy,
        }
        child = await runToCompletion(self, [self.bin + "/sh", SCRIPT], env=env)
        self.assertEqual(child.exitCode, 0, (child.output, child.errors))
        with open(self.log) as f:
            return f.read().splitlines()

    async def test_installsWithoutServices(self) -> None:
        """
        The missing packages (python3-venv among them) are installed while
        a policy forbids starting services; coturn's service is then
        stopped and disabled, and the temporary policy removed.
        """
        calls = await self.runScript()
        [install] = [call for call in calls if call.startswith("apt-get install")]
        for package in ["coturn", "chromium", "chromium-driver", "python3-venv"]:
            self.assertIn(f" {package}", install)
        self.assertTrue(install.endswith("policy=101"), install)
        self.assertIn("systemctl stop coturn.service", calls)
        self.assertIn("systemctl disable --quiet coturn.service", calls)
        self.assertFalse(os.path.exists(self.policy))

    async def test_alreadyStopped(self) -> None:
        """
        A service already stopped and disabled is left alone.
        """
        for name in ["stopped", "disabled"]:
            with open(os.path.join(self.state, name), "w"):
                pass
        calls = await self.runScript()
        self.assertNotIn("systemctl stop coturn.service", calls)
        self.assertNotIn("systemctl disable --quiet coturn.service", calls)
