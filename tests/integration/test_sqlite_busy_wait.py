"""A SQLite writer that finds the write lock taken waits without stopping the gevent
worker it runs in: the worker's other requests go on meanwhile. SQLite's own busy handler
would sleep inside the library, and nothing else in the worker would run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

# A fresh interpreter, patched by gevent as a gunicorn gevent worker is.
_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()

    import json, sqlite3, sys
    import gevent
    from identity.sqlite_store import SqliteStore

    path = sys.argv[1]
    store = SqliteStore(path, busy_timeout=2.0)
    store.set("k", b"before", 60)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as another process would hold it
    ticks = []
    writer_done = []

    def other_requests():
        while not writer_done:
            ticks.append(1)
            gevent.sleep(0.001)

    def writer():
        try:
            store.set("k", b"after", 60)
        finally:
            writer_done.append(len(ticks))

    def release_later():
        gevent.sleep(0.3)
        holder.execute("ROLLBACK")

    greenlets = [gevent.spawn(f) for f in (other_requests, writer, release_later)]
    gevent.joinall(greenlets)
    print(json.dumps({"ticks_while_waiting": writer_done[0], "value": store.get("k").decode()}))
    """
)


def test_a_writer_waiting_for_the_lock_lets_the_workers_other_requests_run(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path / "state.db")],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer = json.loads(result.stdout)
    assert answer["value"] == "after"
    # 300 ms of waiting at one tick per millisecond; a library sleep would allow none
    assert answer["ticks_while_waiting"] >= 50, answer
