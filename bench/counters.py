"""How many AWS calls a handler made: the fakes' own counters, or moto's request
recording."""

from __future__ import annotations

import time
from collections import Counter
from typing import Protocol

import requests

from tests.fixtures.recorder import Recorder


class CallCounter(Protocol):
    """AWS calls by operation since the last ``reset``."""

    settle_seconds: float

    def reset(self) -> None: ...

    def counts(self) -> dict[str, int]: ...


class FakeCounter:
    """The fake Cognito's and fake STS's counters (`bench.upstreams`)."""

    settle_seconds = 0.4

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def reset(self) -> None:
        requests.post(f"{self.base_url}/_bench/reset", timeout=10).raise_for_status()

    def counts(self) -> dict[str, int]:
        response = requests.get(f"{self.base_url}/_bench/counts", timeout=10)
        response.raise_for_status()
        counts: dict[str, int] = response.json()
        return counts


class MotoCounter:
    """AWS operations (any service's) in moto's request recording, which stays on
    throughout so that warm-up and measured runs cost moto the same."""

    settle_seconds = 1.0

    def __init__(self, endpoint_url: str) -> None:
        self.recorder = Recorder(endpoint_url, timeout=60)
        self.recorder.reset()
        self.recorder.start()

    def reset(self) -> None:
        self.recorder.reset()

    def counts(self) -> dict[str, int]:
        found = Counter(r.operation for r in self.recorder.requests() if r.operation)
        return dict(found)


def settled_counts(counter: CallCounter, limit: float = 60.0) -> dict[str, int]:
    """The counts once the requests a finished run left in flight have made their calls
    (two readings ``settle_seconds`` apart agree)."""
    deadline = time.monotonic() + limit
    previous = counter.counts()
    while time.monotonic() < deadline:
        time.sleep(counter.settle_seconds)
        current = counter.counts()
        if current == previous:
            return current
        previous = current
    raise RuntimeError(f"the upstream still received calls {limit:g} s after the load stopped")
