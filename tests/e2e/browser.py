"""
Drive one headless Chromium through tests/e2e/webrtc.html, for
C{tests.test_e2e_browser}: run as a script, inside the network namespace
the test made (C{ip netns exec NS python browser.py WORKDIR}).

Usage::

    python browser.py [--ca-certificate PEM] [--chromium-flag FLAG]... WORKDIR

It serves this directory on 127.0.0.1 (a port the kernel picks), starts
Debian's C{chromedriver} and C{chromium} (headless, as root with
C{--no-sandbox}, a fresh profile and home directory under C{WORKDIR}, and
the switches that keep it from calling home), opens the page, and prints
one line::

    READY {"browserVersion": ...}

Then it reads commands from its standard input, one JSON object a line,
C{{"call": NAME, "args": [...], "timeout": SECONDS}}: each runs the page's
async function C{NAME(...args)} and prints its result (or the reason it
has none)::

    RESULT {...}
    FAILED {"error": ...}

At the end of its input it quits Chromium and exits.

C{--ca-certificate} makes Chromium trust a certificate for C{turns:}: it is
added, with C{certutil}, as a trusted CA to the NSS database of this
Chromium's own home directory (C{WORKDIR/home/.pki/nssdb}, where Chromium
on Linux looks for locally trusted CAs).  Certificate checks stay on: a
server whose certificate that CA did not sign, or whose certificate is not
for the address in the C{turns:} URL, is refused.

Chromium, chromedriver and their children stay inside the namespace, so
the test ends every one of them, whatever happens here, by killing what
is left in the namespace.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from typing import Any, Iterator, List

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGE = "webrtc.html"

# Without these Chromium spends its time trying to reach Google's services
# (update checks, sync, field trials, QUIC probes), none of which exist in
# the namespace.
QUIET_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-quic",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--password-store=basic",
    "--mute-audio",
    # Preconnects and the like still look up Google's and the default
    # search engine's names: resolve no name at all.  The rules apply to
    # addresses too, so let through the page's (127.0.0.1) and the relay's
    # (the tests' addresses are in 10.0.0.0/8), which TCP and TLS TURN
    # connections pass through the resolver.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE 10.*",
]

# The page's async function NAME(...args), its result handed back to
# Selenium; an exception becomes {"pageError": ...} instead of a timeout.
CALL_SCRIPT = """
const done = arguments[arguments.length - 1];
const name = arguments[0];
const args = arguments[1];
Promise.resolve()
  .then(() => window[name](...args))
  .then(done, (error) => done({pageError: String((error && error.stack) || error)}));
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """
    Serves files without logging each request to standard error.
    """

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def servePage() -> Iterator[str]:
    """
    Serve this directory on 127.0.0.1 in a thread.

    @return: (as a context manager) the page's URL.
    """
    directory = os.path.dirname(os.path.abspath(__file__))
    handler = functools.partial(QuietHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{PAGE}"
    finally:
        server.shutdown()
        server.server_close()


def trustCertificate(home: str, certificate: str) -> None:
    """
    Create the NSS database Chromium reads in C{home}, and trust
    C{certificate} in it as a CA for servers (C{-t C,,}); a self-signed
    certificate is its own CA.
    """
    database = "sql:" + os.path.join(home, ".pki", "nssdb")
    os.makedirs(os.path.join(home, ".pki", "nssdb"))
    subprocess.run(["certutil", "-N", "-d", database, "--empty-password"], check=True)
    subprocess.run(
        ["certutil", "-A", "-d", database, "-n", "turnrelay-e2e", "-t", "C,,", "-i", certificate],
        check=True,
    )


def startChromium(workdir: str, extraFlags: List[str]) -> webdriver.Chrome:
    """
    Start chromedriver and a headless Chromium with a fresh profile and
    home under C{workdir}; their logs go to files there.
    """
    home = os.path.join(workdir, "home")
    os.makedirs(home, exist_ok=True)
    options = webdriver.ChromeOptions()
    # Set explicitly so that Selenium Manager never looks for (or
    # downloads) a browser or driver of its own.
    options.binary_location = CHROMIUM
    for flag in QUIET_FLAGS + extraFlags:
        options.add_argument(flag)
    options.add_argument("--user-data-dir=" + os.path.join(workdir, "profile"))
    options.add_argument("--enable-logging=stderr")
    environment = dict(os.environ, HOME=home)
    service = Service(
        executable_path=CHROMEDRIVER,
        log_output=os.path.join(workdir, "chromedriver.log"),
        env=environment,
    )
    return webdriver.Chrome(options=options, service=service)


def emit(kind: str, value: Any) -> None:
    """
    Print one line of the protocol.
    """
    sys.stdout.write(f"{kind} {json.dumps(value)}\n")
    sys.stdout.flush()


def serve(driver: webdriver.Chrome, url: str) -> None:
    """
    Open the page, then run the page functions asked for on standard input
    until its end.
    """
    driver.get(url)
    emit("READY", {"browserVersion": driver.capabilities.get("browserVersion")})
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        driver.set_script_timeout(command.get("timeout", 60))
        try:
            result = driver.execute_async_script(CALL_SCRIPT, command["call"], command["args"])
        except WebDriverException as e:
            emit("FAILED", {"error": str(e.msg or e)})
        else:
            emit("RESULT", result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ca-certificate", help="a PEM certificate to trust for turns:")
    parser.add_argument(
        "--chromium-flag", action="append", default=[], help="another Chromium switch"
    )
    parser.add_argument("workdir", help="a directory for the profile, home and logs")
    options = parser.parse_args()
    if options.ca_certificate:
        trustCertificate(os.path.join(options.workdir, "home"), options.ca_certificate)
    with servePage() as url:
        driver = startChromium(options.workdir, options.chromium_flag)
        try:
            serve(driver, url)
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
