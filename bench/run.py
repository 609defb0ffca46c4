"""``python -m bench``: the load benchmark of ``POST /v1/token`` and ``POST /v1/credentials``.

For each upstream (the moto server, an instant fake of Cognito and STS, a fake that answers
after 25 ms) it starts two ``chime-broker serve`` servers and the naive baseline
(`bench.baseline`) under the same gunicorn settings: one broker as configured by default
(users' credentials cached across sessions: the "returning users" rows) and one with
``service.cache_credentials: false`` (every exchange vends: the "new session each time"
rows). It shows each of them every user once, drives each with `bench.load` for a bounded
time, and counts the AWS calls each made and the CPU its workers used. Everything binds
loopback ports and is stopped at the end; the markdown table goes to stdout and to
``bench/results/latest.md``, a ``--profile`` beside it; a run that fails leaves the
servers' whole logs beside it too (``failed-run-logs/``).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
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

from bench.baseline import COGNITO_PROVIDER, DEVELOPER_PROVIDER, STS_PROVIDER
from bench.counters import CallCounter, FakeCounter, MotoCounter, settled_counts
from bench.cprofile_serve import PROFILE_DIR_ENV
from bench.cpu import ServerCpu
from bench.load import LoadRequest, LoadResult, run_load
from bench.processes import REGION, REPO, Processes, aws_env, free_port
from bench.profiling import CPROFILE, PY_SPY, choose_profiler, cprofile_pass, py_spy_pass
from bench.report import Row, RowSpec, Setting, render

DEFAULT_OUTPUT = REPO / "bench" / "results" / "latest.md"
# Where, beside the report, a run that fails leaves every server's whole log.
FAILED_RUN_LOGS = "failed-run-logs"
CLIENT_ID = "bench-app"
APP_INSTANCE_ARN = f"arn:aws:chime:{REGION}:123456789012:app-instance/bench"
FAKE_POOL_ID = f"{REGION}:00000000-0000-4000-8000-00000000be9c"
FAKE_DEVELOPER_PROVIDER = "login.bench.chat"
FAKE_STS_ROLE_ARN = "arn:aws:iam::123456789012:role/bench-user"
UPSTREAMS = ("moto", "instant", "25ms")
EXCHANGES = ("cognito", "cognito_developer", "sts")
PROVIDERS = {
    "cognito": COGNITO_PROVIDER,
    "cognito_developer": DEVELOPER_PROVIDER,
    "sts": STS_PROVIDER,
}
PROFILERS = ("auto", PY_SPY, CPROFILE)
# the broker servers of an upstream: one that caches users' credentials across sessions
# (the default), one that vends for every new session
BROKERS = {"returning": True, "new": False}


@dataclass(frozen=True)
class Options:
    duration: float
    warmup: float
    connections: int
    users: int
    workers: int
    worker_class: str
    upstreams: tuple[str, ...]
    exchanges: tuple[str, ...]
    profile: str | None
    profiler: str
    output: Path

    def rows(self) -> list[RowSpec]:
        """Every row the run measures, in order."""
        specs: list[RowSpec] = []
        for upstream in self.upstreams:
            for exchange in self.exchanges:
                for handler in ("new", "returning", "naive"):
                    specs.append(RowSpec(upstream, "token", exchange, handler))
                if exchange == "cognito":
                    for handler in ("broker", "naive"):
                        specs.append(RowSpec(upstream, "credentials", exchange, handler))
        return specs

    def command(self) -> str:
        """The command line that repeats this run."""
        parts = [
            "python -m bench",
            f"--upstreams {','.join(self.upstreams)}",
            f"--exchanges {','.join(self.exchanges)}",
            f"--duration {self.duration:g}",
            f"--warmup {self.warmup:g}",
            f"--users {self.users}",
            f"--connections {self.connections}",
            f"--workers {self.workers}",
            f"--worker-class {self.worker_class}",
        ]
        if self.profile:
            parts.append(f"--profile {self.profile}")
        if self.profiler != "auto":
            parts.append(f"--profiler {self.profiler}")
        return " ".join(parts)


@dataclass(frozen=True)
class Upstream:
    """Where the handlers' Cognito calls go, and how they are counted."""

    name: str
    endpoint_url: str
    pool_id: str
    developer_provider: str
    sts_role_arn: str
    counter: CallCounter


@dataclass(frozen=True)
class Server:
    """One running gunicorn server: its base URL and its master's pid."""

    url: str
    pid: int


@dataclass(frozen=True)
class Profiling:
    """``--profile``: the row, how it is profiled, and where the profile goes."""

    row: RowSpec
    profiler: str
    why: str
    output_dir: Path
    work: Path


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


def _broker_config(
    upstream: Upstream, issuer: str, public_url: str, store: Path, *, cache_credentials: bool
) -> str:
    config: dict[str, Any] = {
        "mode": "production",
        "aws": {
            "region": REGION,
            "cognito": {
                "identity_pool_id": upstream.pool_id,
                "developer_provider_name": upstream.developer_provider,
            },
            "sts": {"role_arn": upstream.sts_role_arn},
        },
        "chime": {"app_instance_arn": APP_INSTANCE_ARN},
        "service": {
            "public_url": public_url,
            "secret_key": secrets.token_hex(32),
            "cache_credentials": cache_credentials,
        },
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
            {
                "name": STS_PROVIDER,
                "kind": "oidc",
                "issuer": issuer,
                "client_id": CLIENT_ID,
                "exchange": "sts",
                "map": {"user_id": "sts-{sub}"},
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


def _start_broker(
    procs: Processes,
    name: str,
    upstream: Upstream,
    idp: Identity,
    options: Options,
    work: Path,
    *,
    cache_credentials: bool,
    cprofile_dir: Path | None,
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config_path = work / f"{name}.yaml"
    store = work / f"state-{name}.db"
    config_path.write_text(
        _broker_config(upstream, idp.issuer, url, store, cache_credentials=cache_credentials),
        encoding="utf-8",
    )
    env = aws_env(upstream.endpoint_url)
    env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="metrics-", dir=work)
    # under --profile without ptrace: the same server with a cProfile switch in its workers
    launcher = ["service.cli", "serve"] if cprofile_dir is None else ["bench.cprofile_serve"]
    if cprofile_dir is not None:
        env[PROFILE_DIR_ENV] = str(cprofile_dir)
    process = procs.start(
        name,
        [
            sys.executable, "-m", *launcher,
            f"--config={config_path}",
            f"--bind=127.0.0.1:{port}",
            f"--workers={options.workers}",
            f"--worker-class={options.worker_class}",
        ],
        env,
    )  # fmt: skip
    return process, url


def _start_baseline(
    procs: Processes,
    name: str,
    upstream: Upstream,
    idp: Identity,
    options: Options,
    *,
    cprofile_dir: Path | None,
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = aws_env(upstream.endpoint_url)
    env.update(
        BENCH_ISSUER=idp.issuer,
        BENCH_CLIENT_ID=CLIENT_ID,
        BENCH_JWKS_URL=idp.jwks_url,
        BENCH_POOL_ID=upstream.pool_id,
        BENCH_DEVELOPER_PROVIDER=upstream.developer_provider,
        BENCH_STS_ROLE_ARN=upstream.sts_role_arn,
        BENCH_APP_INSTANCE_ARN=APP_INSTANCE_ARN,
    )
    hooks: list[str] = []
    if cprofile_dir is not None:
        env[PROFILE_DIR_ENV] = str(cprofile_dir)
        hooks = ["--config=python:bench.cprofile_serve"]
    process = procs.start(
        name,
        [
            sys.executable, "-m", "gunicorn",
            *_gunicorn_options(options),
            *hooks,
            f"--bind=127.0.0.1:{port}",
            "bench.baseline:create_app()",
        ],
        env,
    )  # fmt: skip
    return process, f"http://127.0.0.1:{port}"


@contextmanager
def _handlers(
    procs: Processes,
    options: Options,
    upstream: Upstream,
    idp: Identity,
    work: Path,
    profiling: Profiling | None,
) -> Iterator[dict[str, Server]]:
    """The two brokers (``returning``: credentials cached across sessions; ``new``: every
    session vends) and the baseline (``naive``) against ``upstream``."""

    def cprofile_dir(handler: str) -> Path | None:
        if profiling is None or profiling.profiler != CPROFILE:
            return None
        row = profiling.row
        wanted = "returning" if row.handler == "broker" else row.handler
        return profiling.work if (row.upstream, wanted) == (upstream.name, handler) else None

    started: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    names = {handler: f"{handler}-{upstream.name}" for handler in (*BROKERS, "naive")}
    try:
        for handler, cache_credentials in BROKERS.items():
            started[handler] = _start_broker(
                procs, names[handler], upstream, idp, options, work,
                cache_credentials=cache_credentials, cprofile_dir=cprofile_dir(handler),
            )  # fmt: skip
        started["naive"] = _start_baseline(
            procs, names["naive"], upstream, idp, options, cprofile_dir=cprofile_dir("naive")
        )
        for handler, (process, url) in started.items():
            procs.wait_ready(f"{url}/healthz", process, names[handler])
        yield {handler: Server(url, process.pid) for handler, (process, url) in started.items()}
    except Exception:
        for name in names.values():
            print(f"--- {name} log, last lines:\n{procs.log_tail(name)}", file=sys.stderr)
        raise
    finally:
        procs.stop(*(process for process, _ in started.values()))


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
    server: Server, batch: Sequence[LoadRequest], counter: CallCounter, options: Options
) -> tuple[LoadResult, dict[str, int], float]:
    """One row: the load's result, the AWS calls it caused, the workers' CPU seconds."""
    if options.warmup > 0:
        run_load(server.url, batch, connections=options.connections, duration=options.warmup)
        settled_counts(counter)
    counter.reset()
    cpu = ServerCpu(server.pid)
    cpu_before = cpu.seconds()
    result = run_load(server.url, batch, connections=options.connections, duration=options.duration)
    # settled: the requests in flight when the load stopped have been served too
    calls = settled_counts(counter)
    return result, calls, cpu.seconds() - cpu_before


def _profile(
    server: Server,
    batch: Sequence[LoadRequest],
    counter: CallCounter,
    options: Options,
    profiling: Profiling,
) -> list[Path]:
    """Run the row's load once more under the profiler; the files it wrote."""
    slug = profiling.row.id.replace(":", "-")
    if profiling.profiler == PY_SPY:
        output = profiling.output_dir / f"profile-{slug}.svg"
        pass_ = py_spy_pass(server.pid, output, profiling.work / "py-spy.log")
    else:
        output = profiling.output_dir / f"profile-{slug}.prof"
        pass_ = cprofile_pass(server.pid, profiling.work, output)
    with pass_:
        run_load(server.url, batch, connections=options.connections, duration=options.duration)
    settled_counts(counter)
    if profiling.profiler == CPROFILE:
        return [output, output.with_suffix(".txt")]
    return [output]


def _run_upstream(
    procs: Processes,
    options: Options,
    upstream: Upstream,
    idp: Identity,
    work: Path,
    profiling: Profiling | None,
    profiles: list[Path],
) -> Iterator[Row]:
    specs = [spec for spec in options.rows() if spec.upstream == upstream.name]
    with _handlers(procs, options, upstream, idp, work, profiling) as servers:
        sessions: list[str] = []
        for spec in specs:
            handler = "returning" if spec.handler == "broker" else spec.handler
            provider = PROVIDERS[spec.exchange]
            batch: list[LoadRequest]
            if spec.endpoint == "token":
                batch = [_token_request(provider, t) for t in idp.id_tokens]
                if handler != "naive":
                    # every user has exchanged once: identity ids are cached in both
                    # brokers, and in the default one the users' credentials too
                    answers = _send_each(servers[handler].url, batch)
                    if handler == "returning" and spec.exchange == "cognito":
                        sessions = [a["broker_session"]["token"] for a in answers]
            elif handler == "naive":
                # the naive handler keeps no sessions: its clients resend the id token
                batch = [_credentials_request(t) for t in idp.id_tokens]
            else:
                batch = [_credentials_request(s) for s in sessions]
                _send_each(servers[handler].url, batch)
            result, calls, cpu = _measure(servers[handler], batch, upstream.counter, options)
            row = Row(spec, result, calls, cpu)
            print(row.progress_line(), flush=True)
            yield row
            if profiling is not None and profiling.row == spec:
                written = _profile(servers[handler], batch, upstream.counter, options, profiling)
                profiles.extend(written)
                shown = ", ".join(str(p) for p in written)
                print(f"  profile of {spec.id} ({profiling.profiler}): {shown}", flush=True)


def _run(options: Options, work: Path) -> tuple[list[Row], list[Path], Profiling | None]:
    """The rows, the profiles written, and how ``--profile`` was taken."""
    from service.demo.aws_world import bootstrap
    from service.demo.dev_idp import DevIdentityProvider

    profiling: Profiling | None = None
    if options.profile is not None:
        row = next(spec for spec in options.rows() if spec.id == options.profile)
        profiler, why = choose_profiler(options.profiler)
        profile_work = work / "profile"
        profile_work.mkdir()
        profiling = Profiling(row, profiler, why, options.output.parent, profile_work)
        profiling.output_dir.mkdir(parents=True, exist_ok=True)
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
                FAKE_STS_ROLE_ARN, FakeCounter(instant_url),
            ),
        }  # fmt: skip
        if "25ms" in options.upstreams:
            slow_url = _start_upstreams(procs, jwks_file, 0.025, "fake-25ms")
            upstreams["25ms"] = Upstream(
                "25ms", slow_url, FAKE_POOL_ID, FAKE_DEVELOPER_PROVIDER,
                FAKE_STS_ROLE_ARN, FakeCounter(slow_url),
            )  # fmt: skip
        if "moto" in options.upstreams:
            moto_url = _start_moto(procs, work)
            world = bootstrap(moto_url, region=REGION)
            upstreams["moto"] = Upstream(
                "moto", moto_url, world.identity_pool_id, world.developer_provider_name,
                world.user_role_arn, MotoCounter(moto_url),
            )  # fmt: skip
        rows: list[Row] = []
        profiles: list[Path] = []
        for name in options.upstreams:
            print(f"{name}:", flush=True)
            rows.extend(
                _run_upstream(procs, options, upstreams[name], idp, work, profiling, profiles)
            )
        return rows, profiles, profiling
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
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per row")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each row")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-class", default="gevent", choices=["gevent", "gthread", "sync"])
    parser.add_argument(
        "--upstreams", default=",".join(UPSTREAMS), help=f"comma-separated subset of {UPSTREAMS}"
    )
    parser.add_argument(
        "--exchanges",
        default=",".join(EXCHANGES),
        help=f"comma-separated subset of {EXCHANGES}: the exchange modes measured",
    )
    parser.add_argument(
        "--profile",
        metavar="ROW",
        help="also profile this row (UPSTREAM:ENDPOINT:EXCHANGE:HANDLER, as the progress "
        "lines name it, e.g. 25ms:token:cognito:new) in a pass of its own; the profile "
        "goes beside --output",
    )
    parser.add_argument(
        "--profiler",
        default="auto",
        choices=PROFILERS,
        help="auto: py-spy's flame graph where py-spy is installed and may ptrace, else cProfile",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    upstreams = tuple(u for u in args.upstreams.split(",") if u)
    if not upstreams or set(upstreams) - set(UPSTREAMS):
        parser.error(f"--upstreams: a comma-separated subset of {', '.join(UPSTREAMS)}")
    exchanges = tuple(e for e in args.exchanges.split(",") if e)
    if not exchanges or set(exchanges) - set(EXCHANGES):
        parser.error(f"--exchanges: a comma-separated subset of {', '.join(EXCHANGES)}")
    options = Options(
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        users=args.users,
        workers=args.workers,
        worker_class=args.worker_class,
        upstreams=upstreams,
        exchanges=exchanges,
        profile=args.profile,
        profiler=args.profiler,
        output=args.output,
    )
    row_ids = [spec.id for spec in options.rows()]
    if options.profile is not None and options.profile not in row_ids:
        parser.error(
            f"--profile: {options.profile!r} is not a row of this run; its rows are\n  "
            + "\n  ".join(row_ids)
        )
    return options


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # unwinds through the finally blocks, which stop every child process
    raise SystemExit(128 + signum)


def keep_logs(work: Path, into: Path) -> Path:
    """Copy every process's log of a run (``work/*.log``) into ``into``, emptied first: a
    failed run's cause is often far above the tail printed with the error."""
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    for log in sorted(work.glob("*.log")):
        shutil.copyfile(log, into / log.name)
    return into


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chime-bench-") as tmp:
        try:
            rows, profiles, profiling = _run(options, Path(tmp))
        except Exception:
            kept = keep_logs(Path(tmp), options.output.parent / FAILED_RUN_LOGS)
            print(f"the servers' whole logs are in {kept}", file=sys.stderr)
            raise
    setting = Setting(
        workers=options.workers,
        worker_class=options.worker_class,
        connections=options.connections,
        duration=options.duration,
        warmup=options.warmup,
        users=options.users,
        load_before=load_before,
        load_after=os.getloadavg()[0],
        command=options.command(),
        profiled_row=profiling.row.id if profiling else "",
        profiles=tuple(_relative(p) for p in profiles),
        profiler=f"{profiling.profiler}, {profiling.why}" if profiling else "",
    )
    report = render(rows, setting)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(report, encoding="utf-8")
    print(f"\n{report}\nwritten to {options.output} ({time.monotonic() - started:.0f} s)")
    return 0
