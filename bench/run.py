"""``python -m bench``: the load benchmark of ``POST /v1/token`` and ``POST /v1/credentials``.

For each upstream (the moto server, an instant fake of Cognito, a fake that answers after
25 ms) it starts ``chime-broker serve`` and the naive baseline (`bench.baseline`) under the
same gunicorn settings, shows each of them every user once, drives each with
`bench.load` for a bounded time, and counts the Cognito calls each made. Everything
binds loopback ports and is stopped at the end; the markdown table goes to stdout and to
``bench/results/latest.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import requests
import yaml

from bench.baseline import COGNITO_PROVIDER, DEVELOPER_PROVIDER
from bench.counters import CallCounter, FakeCounter, MotoCounter, settled_counts
from bench.load import LoadRequest, LoadResult, run_load
from bench.processes import REGION, REPO, Processes, aws_env, free_port
from bench.report import Row, Setting, render

DEFAULT_OUTPUT = REPO / "bench" / "results" / "latest.md"
CLIENT_ID = "bench-app"
APP_INSTANCE_ARN = f"arn:aws:chime:{REGION}:123456789012:app-instance/bench"
FAKE_POOL_ID = f"{REGION}:00000000-0000-4000-8000-00000000be9c"
FAKE_DEVELOPER_PROVIDER = "login.bench.chat"
UPSTREAMS = ("moto", "instant", "25ms")


@dataclass(frozen=True)
class Options:
    duration: float
    warmup: float
    connections: int
    users: int
    workers: int
    worker_class: str
    upstreams: tuple[str, ...]
    developer: bool
    output: Path


@dataclass(frozen=True)
class Upstream:
    """Where the handlers' Cognito calls go, and how they are counted."""

    name: str
    endpoint_url: str
    pool_id: str
    developer_provider: str
    counter: CallCounter


@dataclass(frozen=True)
class Identity:
    """The identity provider's side: who the users are and where its keys are served."""

    issuer: str
    jwks_url: str
    id_tokens: tuple[str, ...]


# --------------------------------------------------------------------------- servers


def _start_upstreams(procs: Processes, jwks_file: Path, delay: float, name: str) -> str:
    argv = [sys.executable, "-m", "bench.upstreams", f"--delay={delay}", f"--jwks-file={jwks_file}"]
    process = procs.start(name, argv, aws_env(""), stdout=subprocess.PIPE)
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    if not line.isdigit():
        raise RuntimeError(f"{name} did not start:\n{procs.log_tail(name)}")
    return f"http://127.0.0.1:{line}"


def _start_moto(procs: Processes, work: Path) -> str:
    port = free_port()
    env = aws_env("")
    # the recorder's file goes to the run's temporary directory, not the repository
    env["MOTO_RECORDER_FILEPATH"] = str(work / "moto_recording")
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = procs.start("moto", argv, env)
    url = f"http://127.0.0.1:{port}"
    procs.wait_ready(f"{url}/moto-api/", process, "moto")
    return url


def _broker_config(upstream: Upstream, issuer: str, public_url: str, store: Path) -> str:
    config: dict[str, Any] = {
        "mode": "production",
        "aws": {
            "region": REGION,
            "cognito": {
                "identity_pool_id": upstream.pool_id,
                "developer_provider_name": upstream.developer_provider,
            },
        },
        "chime": {"app_instance_arn": APP_INSTANCE_ARN},
        "service": {"public_url": public_url, "secret_key": secrets.token_hex(32)},
        "store": f"sqlite:///{store}",
        "providers": [
            {
                "name": COGNITO_PROVIDER,
                "kind": "oidc",
                "issuer": issuer,
                "client_id": CLIENT_ID,
                "exchange": "cognito",
                "map": {"user_id": "{sub}"},
            },
            {
                "name": DEVELOPER_PROVIDER,
                "kind": "oidc",
                "issuer": issuer,
                "client_id": CLIENT_ID,
                "exchange": "cognito_developer",
                "map": {"user_id": "dev-{sub}"},
            },
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _gunicorn_options(options: Options) -> list[str]:
    """The settings ``chime-broker serve`` gives gunicorn, for the baseline."""
    argv = [
        f"--workers={options.workers}",
        f"--worker-class={options.worker_class}",
        "--timeout=30",
        "--graceful-timeout=10",
        "--no-control-socket",
    ]
    if options.worker_class == "gevent":
        argv.append("--worker-connections=256")
    if options.worker_class == "gthread":
        argv.append("--threads=8")
    return argv


@contextmanager
def _handlers(
    procs: Processes, options: Options, upstream: Upstream, idp: Identity, work: Path
) -> Iterator[dict[str, str]]:
    """``chime-broker serve`` and the baseline against ``upstream``: their base URLs."""
    broker_port, baseline_port = free_port(), free_port()
    broker_url = f"http://127.0.0.1:{broker_port}"
    baseline_url = f"http://127.0.0.1:{baseline_port}"
    config_path = work / f"broker-{upstream.name}.yaml"
    config_path.write_text(
        _broker_config(upstream, idp.issuer, broker_url, work / f"state-{upstream.name}.db"),
        encoding="utf-8",
    )
    broker_name, baseline_name = f"broker-{upstream.name}", f"baseline-{upstream.name}"
    broker_env = aws_env(upstream.endpoint_url)
    broker_env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="metrics-", dir=work)
    broker = procs.start(
        broker_name,
        [
            sys.executable, "-m", "service.cli", "serve",
            f"--config={config_path}",
            f"--bind=127.0.0.1:{broker_port}",
            f"--workers={options.workers}",
            f"--worker-class={options.worker_class}",
        ],
        broker_env,
    )  # fmt: skip
    baseline_env = aws_env(upstream.endpoint_url)
    baseline_env.update(
        BENCH_ISSUER=idp.issuer,
        BENCH_CLIENT_ID=CLIENT_ID,
        BENCH_JWKS_URL=idp.jwks_url,
        BENCH_POOL_ID=upstream.pool_id,
        BENCH_DEVELOPER_PROVIDER=upstream.developer_provider,
        BENCH_APP_INSTANCE_ARN=APP_INSTANCE_ARN,
    )
    baseline = procs.start(
        baseline_name,
        [
            sys.executable, "-m", "gunicorn",
            *_gunicorn_options(options),
            f"--bind=127.0.0.1:{baseline_port}",
            "bench.baseline:create_app()",
        ],
        baseline_env,
    )  # fmt: skip
    try:
        procs.wait_ready(f"{broker_url}/healthz", broker, broker_name)
        procs.wait_ready(f"{baseline_url}/healthz", baseline, baseline_name)
        yield {"broker": broker_url, "naive": baseline_url}
    except Exception:
        for name in (broker_name, baseline_name):
            print(f"--- {name} log, last lines:\n{procs.log_tail(name)}", file=sys.stderr)
        raise
    finally:
        procs.stop(broker)
        procs.stop(baseline)


# --------------------------------------------------------------------------- scenarios


def _token_request(provider: str, id_token: str) -> LoadRequest:
    body = json.dumps({"provider": provider, "id_token": id_token})
    return LoadRequest("POST", "/v1/token", {"Content-Type": "application/json"}, body)


def _credentials_request(bearer: str) -> LoadRequest:
    return LoadRequest("POST", "/v1/credentials", {"Authorization": f"Bearer {bearer}"})


def _send_each(base_url: str, batch: Sequence[LoadRequest]) -> list[dict[str, Any]]:
    """Send every request once (so every user is a returning user); the JSON answers."""

    def send(r: LoadRequest) -> dict[str, Any]:
        response = requests.request(
            r.method, base_url + r.path, headers=dict(r.headers), data=r.body or None, timeout=60
        )
        if response.status_code != 200:
            raise RuntimeError(
                f"{r.method} {base_url}{r.path}: {response.status_code} {response.text[:300]}"
            )
        answer: dict[str, Any] = response.json()
        return answer

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(send, batch))


def _measure(
    base_url: str, batch: Sequence[LoadRequest], counter: CallCounter, options: Options
) -> tuple[LoadResult, dict[str, int]]:
    if options.warmup > 0:
        run_load(base_url, batch, connections=options.connections, duration=options.warmup)
        settled_counts(counter)
    counter.reset()
    result = run_load(base_url, batch, connections=options.connections, duration=options.duration)
    return result, settled_counts(counter)


def _run_upstream(
    procs: Processes, options: Options, upstream: Upstream, idp: Identity, work: Path
) -> Iterator[Row]:
    with _handlers(procs, options, upstream, idp, work) as urls:

        def cell(endpoint: str, exchange: str, handler: str, batch: Sequence[LoadRequest]) -> Row:
            result, calls = _measure(urls[handler], batch, upstream.counter, options)
            row = Row(upstream.name, endpoint, exchange, handler, result, calls)
            print(row.progress_line(), flush=True)
            return row

        token_batch = [_token_request(COGNITO_PROVIDER, t) for t in idp.id_tokens]
        sessions = [a["broker_session"]["token"] for a in _send_each(urls["broker"], token_batch)]
        _send_each(urls["naive"], token_batch)
        for handler in ("broker", "naive"):
            yield cell("POST /v1/token", "cognito", handler, token_batch)

        # the naive handler keeps no sessions: its clients keep the id token and resend it
        credential_batches = {
            "broker": [_credentials_request(s) for s in sessions],
            "naive": [_credentials_request(t) for t in idp.id_tokens],
        }
        for handler, batch in credential_batches.items():
            _send_each(urls[handler], batch)
            yield cell("POST /v1/credentials", "cognito", handler, batch)

        if options.developer:
            developer_batch = [_token_request(DEVELOPER_PROVIDER, t) for t in idp.id_tokens]
            for handler in ("broker", "naive"):
                _send_each(urls[handler], developer_batch)
                yield cell("POST /v1/token", "cognito_developer", handler, developer_batch)


def _run(options: Options, work: Path) -> list[Row]:
    from service.demo.aws_world import bootstrap
    from service.demo.dev_idp import DevIdentityProvider

    procs = Processes(work)
    dev_idp = DevIdentityProvider().start()
    try:
        dev_idp.register_client(CLIENT_ID)
        subjects = [f"user-{i:04d}" for i in range(options.users)]
        for sub in subjects:
            dev_idp.add_user(sub, name=f"Bench User {sub}")
        # an hour: longer than the run, so cognito-mode sessions can vend again throughout
        id_tokens = tuple(
            dev_idp.mint_id_token({"sub": sub}, audience=CLIENT_ID, lifetime=3600)
            for sub in subjects
        )
        jwks_file = work / "jwks.json"
        jwks_file.write_text(json.dumps(dev_idp.jwks()), encoding="utf-8")
        instant_url = _start_upstreams(procs, jwks_file, 0.0, "fake-instant")
        # the IdP's keys as a remote IdP serves them, for the baseline's per-request fetch
        idp = Identity(dev_idp.issuer, f"{instant_url}/jwks", id_tokens)
        upstreams: dict[str, Upstream] = {
            "instant": Upstream(
                "instant", instant_url, FAKE_POOL_ID, FAKE_DEVELOPER_PROVIDER,
                FakeCounter(instant_url),
            ),
        }  # fmt: skip
        if "25ms" in options.upstreams:
            slow_url = _start_upstreams(procs, jwks_file, 0.025, "fake-25ms")
            upstreams["25ms"] = Upstream(
                "25ms", slow_url, FAKE_POOL_ID, FAKE_DEVELOPER_PROVIDER, FakeCounter(slow_url)
            )
        if "moto" in options.upstreams:
            moto_url = _start_moto(procs, work)
            world = bootstrap(moto_url, region=REGION)
            upstreams["moto"] = Upstream(
                "moto", moto_url, world.identity_pool_id, world.developer_provider_name,
                MotoCounter(moto_url),
            )  # fmt: skip
        rows: list[Row] = []
        for name in options.upstreams:
            print(f"{name}:", flush=True)
            rows.extend(_run_upstream(procs, options, upstreams[name], idp, work))
        return rows
    finally:
        procs.stop_all()
        dev_idp.stop()


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load benchmark of the broker's token exchange and refresh against "
        "the naive baseline (DESIGN §7).",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per row")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each row")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default="gevent", choices=["gevent", "gthread", "sync"])
    parser.add_argument(
        "--upstreams", default=",".join(UPSTREAMS), help=f"comma-separated subset of {UPSTREAMS}"
    )
    parser.add_argument(
        "--developer",
        action="store_true",
        help="add POST /v1/token rows for exchange: cognito_developer (every new session "
        "needs GetOpenIdTokenForDeveloperIdentity + GetCredentialsForIdentity, as the "
        "baseline does)",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    upstreams = tuple(u for u in args.upstreams.split(",") if u)
    if not upstreams or set(upstreams) - set(UPSTREAMS):
        parser.error(f"--upstreams: a comma-separated subset of {', '.join(UPSTREAMS)}")
    return Options(
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        users=args.users,
        workers=args.workers,
        worker_class=args.worker_class,
        upstreams=upstreams,
        developer=args.developer,
        output=args.output,
    )


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # unwinds through the finally blocks, which stop every child process
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chime-bench-") as tmp:
        rows = _run(options, Path(tmp))
    setting = Setting(
        workers=options.workers,
        worker_class=options.worker_class,
        connections=options.connections,
        duration=options.duration,
        warmup=options.warmup,
        users=options.users,
        load_before=load_before,
        load_after=os.getloadavg()[0],
    )
    report = render(rows, setting)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(report, encoding="utf-8")
    print(f"\n{report}\nwritten to {options.output} ({time.monotonic() - started:.0f} s)")
    return 0
