"""The benchmark's child processes: started with their output in a log file, waited for
until they answer, and stopped by their own pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import requests

REPO = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
# Settings that would send the SDK somewhere other than the local upstream.
_FOREIGN_AWS_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def aws_env(endpoint_url: str) -> dict[str, str]:
    """This process's environment with the AWS SDK pointed at ``endpoint_url``."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_AWS_ENV}
    env.update(
        AWS_ENDPOINT_URL=endpoint_url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONPATH=str(REPO),
    )
    return env


class Processes:
    """The child processes of one run; every one is stopped, by its own pid, on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._running: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the repository with stderr (and stdout unless given) in
        ``<log_dir>/<name>.log``."""
        log = (self.log_dir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            list(argv),
            cwd=REPO,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else log,
            stderr=log,
        )
        self._running.append((process, log))
        return process

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, url: str, process: subprocess.Popen[bytes], name: str) -> None:
        """Wait until ``url`` answers 200; raise with the log's tail if ``process`` exits
        or a minute passes."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited ({process.returncode}):\n{self.log_tail(name)}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not answer {url} within 60 s:\n{self.log_tail(name)}")

    def stop(self, *processes: subprocess.Popen[bytes]) -> None:
        """Stop ``processes`` (all signalled before any is waited for)."""
        entries = [e for e in self._running if any(e[0] is p for p in processes)]
        for entry in entries:
            self._running.remove(entry)
        _terminate(*(process for process, _ in entries))
        for _, log in entries:
            log.close()

    def stop_all(self) -> None:
        self.stop(*(process for process, _ in self._running))


def _terminate(*processes: subprocess.Popen[bytes]) -> None:
    # Each server's graceful shutdown takes a while: let them all run at once.
    running = [process for process in processes if process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    for process in running:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
