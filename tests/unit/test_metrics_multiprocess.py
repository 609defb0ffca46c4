"""In multiprocess mode the metrics name their files by a pid kept in memory, renewed at
fork: a forked worker writes its own files, never its parent's."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

# Runs in a fresh interpreter: prometheus_client picks its mode when first imported.
_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from service.metrics import RequestMetrics, process_identifier

    parent = RequestMetrics(providers=["okta"])
    parent.cache_lookup("credentials", True)
    assert process_identifier() == os.getpid()
    child = os.fork()
    if child == 0:
        ok = process_identifier() == os.getpid()
        worker = RequestMetrics(providers=["okta"])
        worker.cache_lookup("credentials", False)
        worker.cache_lookup("credentials", False)
        os._exit(0 if ok else 3)
    _, status = os.waitpid(child, 0)
    print(os.getpid(), child, os.waitstatus_to_exitcode(status))
    """
)


def _counts(directory: Path, pid: int) -> dict[str, float]:
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    collector = multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    files = [str(directory / f"counter_{pid}.db")]
    found: dict[str, float] = {}
    for metric in collector.merge(files, accumulate=False):  # type: ignore[no-untyped-call]
        for sample in metric.samples:
            if sample.name == "chime_broker_cache_lookups_total":
                found[sample.labels["result"]] = sample.value
    return found


def test_a_forked_worker_counts_in_files_of_its_own_pid(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT],
        env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    parent, child, code = (int(x) for x in result.stdout.split())
    assert code == 0, "the child's identifier was not its own pid"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{parent}.db", f"counter_{child}.db"]
    )
    assert _counts(tmp_path, parent) == {"hit": 1.0}
    # the child starts its own file from zero, the parent's series included
    assert _counts(tmp_path, child) == {"hit": 0.0, "miss": 2.0}
