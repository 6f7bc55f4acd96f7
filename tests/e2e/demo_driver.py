"""
Drive one headless Chromium through turnrelay's demo page (C{demo-page}),
for C{tests.test_e2e_demo}: run as a script inside the network namespace
the test made, as C{browser.py} is, whose Chromium set-up it shares.

Usage::

    python demo_driver.py [--ca-certificate PEM] URL WORKDIR

It opens the page at C{URL} and prints C{READY {...}}; then for each line
of its standard input, C{{"transport": "udp", "screenshot": PATH,
"timeout": SECONDS, "messages": N, "frames": N}}, it picks the transport in
the page's selector, clicks "Start the call", waits (in the page, until
the deadline) for the call to be connected through a relay-relay pair with
C{messages} messages and C{frames} video frames received, or to fail,
saves a screenshot to C{PATH}, hangs up, and prints::

    RESULT {"demo": <the page's window.demo>, "videoPixels": ..., "screenshot": ...}
    FAILED {"error": ...}

At the end of its input it quits Chromium and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

# browser.py, beside this script (on sys.path when run as one).
from browser import emit, startChromium, trustCertificate  # type: ignore[import-not-found]
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

# Resolves with the page's state once the call carried what it should, or
# failed, or the deadline passed; and counts the distinct colours of the
# received video (a blank or black video has one).
WAIT_SCRIPT = """
const done = arguments[arguments.length - 1];
const [timeoutMs, messages, frames] = arguments;
const deadline = Date.now() + timeoutMs;
function videoColours() {
  const video = document.getElementById("received");
  if (!video.videoWidth) {
    return 0;
  }
  const canvas = document.createElement("canvas");
  canvas.width = 64;
  canvas.height = 36;
  const context = canvas.getContext("2d");
  context.drawImage(video, 0, 0, canvas.width, canvas.height);
  const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
  const colours = new Set();
  for (let i = 0; i < data.length; i += 4) {
    colours.add((data[i] >> 4) * 256 + (data[i + 1] >> 4) * 16 + (data[i + 2] >> 4));
  }
  return colours.size;
}
function check() {
  const demo = window.demo;
  const pair = demo.pair;
  const ready = demo.state === "connected" && pair && pair.local && pair.remote
    && pair.local.candidateType === "relay" && pair.remote.candidateType === "relay"
    && demo.received.length >= messages && demo.framesDecoded >= frames
    && videoColours() > 1;
  if (ready || demo.state === "failed" || Date.now() > deadline) {
    done({ demo: JSON.parse(JSON.stringify(demo)), videoColours: videoColours() });
  } else {
    setTimeout(check, 100);
  }
}
check();
"""


def run(driver: webdriver.Chrome, command: Any) -> Any:
    """
    Make one call on the page, as a visitor would.
    """
    Select(driver.find_element(By.ID, "transport")).select_by_value(command["transport"])
    driver.find_element(By.ID, "start").click()
    driver.set_script_timeout(command["timeout"] + 10)
    result = driver.execute_async_script(
        WAIT_SCRIPT, command["timeout"] * 1000, command["messages"], command["frames"]
    )
    driver.save_screenshot(command["screenshot"])
    driver.find_element(By.ID, "stop").click()
    result["screenshot"] = command["screenshot"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ca-certificate", help="a PEM certificate to trust for turns:")
    parser.add_argument("url", help="the demo page")
    parser.add_argument("workdir", help="a directory for the profile, home and logs")
    options = parser.parse_args()
    os.makedirs(options.workdir, exist_ok=True)
    if options.ca_certificate:
        trustCertificate(os.path.join(options.workdir, "home"), options.ca_certificate)
    driver = startChromium(options.workdir, ["--window-size=1200,1400"])
    try:
        driver.get(options.url)
        emit("READY", {"browserVersion": driver.capabilities.get("browserVersion")})
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                emit("RESULT", run(driver, json.loads(line)))
            except WebDriverException as e:
                emit("FAILED", {"error": str(e.msg or e)})
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
