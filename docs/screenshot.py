"""Take docs/demo-signed-in.png: the demo page after Ada signed in.

Runs ``chime-broker demo`` on the ports ``make demo`` uses (8000 and 8001, so they must be
free), follows the walkthrough it prints in Debian's headless Chromium and saves the page.
Usage: ``.venv/bin/python docs/screenshot.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from playwright.sync_api import expect, sync_playwright

OUTPUT = Path(__file__).resolve().parent / "demo-signed-in.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def wait_for(url: str, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit("chime-broker demo exited early")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    raise SystemExit("chime-broker demo did not start")


def main() -> None:
    port, idp_port = 8000, 8001
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "demo",
        "--port",
        str(port),
        "--idp-port",
        str(idp_port),
    ]
    with tempfile.TemporaryDirectory() as workdir:
        child = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for(f"{base}/healthz", child)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
                )
                page = browser.new_page(viewport={"width": 900, "height": 700})
                page.goto(base + "/")
                page.locator('#providers button[data-provider="demo"]').click()
                page.get_by_label("Ada Lovelace").check()
                page.get_by_role("button", name="Sign in").click()
                expect(page.locator("#display-name")).to_have_text("Ada Lovelace")
                page.screenshot(path=str(OUTPUT), full_page=True)
                browser.close()
        finally:
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=20)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
