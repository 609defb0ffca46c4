"""The benchmark's own parts: the fake STS as botocore reads it, the workers' CPU read from
``/proc``, the README's commands, and ``python -m bench`` end to end in a tiny
configuration (its table's columns, its AWS call counts, ``--profile``'s file)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from bench import run as bench_run
from bench.cpu import ServerCpu
from bench.processes import REPO, aws_env
from bench.run import parse_args

README = REPO / "README.md"
ROLE_ARN = "arn:aws:iam::123456789012:role/bench-user"
COLUMNS = [
    "upstream", "endpoint", "exchange", "handler", "req/s", "p50 ms", "p99 ms", "CPU ms/req",
    "errors", "GetId per 1k", "AWS calls per 1k", "req/s vs naive",
]  # fmt: skip
NUMERIC = COLUMNS[4:11]


@pytest.fixture
def upstreams(tmp_path: Path) -> Iterator[str]:
    """``python -m bench.upstreams`` (the instant fakes) as the benchmark starts it."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.upstreams", "--delay=0", f"--jwks-file={jwks}"],
        cwd=REPO,
        env=aws_env(""),
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        port = process.stdout.readline().decode().strip()
        assert port.isdigit(), "bench.upstreams did not print its port"
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def _client(service: str, endpoint_url: str):  # type: ignore[no-untyped-def]
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}),
    )


def test_the_fake_sts_answers_assume_role_as_botocore_parses_it_and_counts_it(
    upstreams: str,
) -> None:
    sts = _client("sts", upstreams)
    cognito = _client("cognito-identity", upstreams)
    requests.post(f"{upstreams}/_bench/reset", timeout=5).raise_for_status()

    before = datetime.now(UTC)
    answer = sts.assume_role(
        RoleArn=ROLE_ARN,
        RoleSessionName="sts-user-0001",
        SourceIdentity="sts-user-0001",
        Tags=[{"Key": "my_applications_user_id", "Value": "sts-user-0001"}],
        DurationSeconds=1800,
    )
    credentials = answer["Credentials"]
    assert credentials["AccessKeyId"].startswith("ASIA")
    assert credentials["SecretAccessKey"] and credentials["SessionToken"]
    lifetime = (credentials["Expiration"] - before).total_seconds()
    assert 1795 <= lifetime <= 1805
    assert answer["SourceIdentity"] == "sts-user-0001"
    assert answer["AssumedRoleUser"]["Arn"] == (
        "arn:aws:sts::123456789012:assumed-role/bench-user/sts-user-0001"
    )
    with pytest.raises(ClientError) as refused:
        sts.assume_role(RoleArn="arn:aws:iam::123456789012:user/someone", RoleSessionName="sts-a")
    assert refused.value.response["Error"]["Code"] == "ValidationError"
    # the Cognito fake still answers on the same port
    pool = "us-east-1:00000000-0000-4000-8000-00000000be9c"
    cognito.get_id(IdentityPoolId=pool, Logins={"login.bench.chat": "dev-user-0001"})

    counts = requests.get(f"{upstreams}/_bench/counts", timeout=5).json()
    assert counts == {
        "GetId": 1,
        "GetCredentialsForIdentity": 0,
        "GetOpenIdTokenForDeveloperIdentity": 0,
        "AssumeRole": 1,
    }


_WORKER = """
import sys, time
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("burned", flush=True)
sys.stdin.read()
"""
_MASTER = f"""
import subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", {_WORKER!r}], stdin=subprocess.PIPE)
print(worker.pid, flush=True)
sys.stdin.read()
worker.stdin.close()
worker.wait()
print("reaped", flush=True)
sys.stdin.read()
"""


def test_worker_cpu_counts_live_workers_and_the_ones_the_master_reaped() -> None:
    """A stand-in master (a process whose child burns 0.3 s of CPU): the child's time is
    counted while it runs and, once reaped, through the master's children's times."""
    master = subprocess.Popen(
        [sys.executable, "-c", _MASTER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert master.stdin is not None and master.stdout is not None
    try:
        worker_pid = int(master.stdout.readline())
        assert master.stdout.readline().strip() == "burned"
        cpu = ServerCpu(master.pid)
        assert cpu.worker_pids() == [worker_pid]
        live = cpu.seconds()
        assert 0.28 <= live < 1.0

        master.stdin.write("\n")
        master.stdin.flush()
        master.stdin.close()  # the worker's stdin is the master's own pipe: the worker ends
        assert master.stdout.readline().strip() == "reaped"
        assert cpu.worker_pids() == []
        assert cpu.seconds() >= live - 0.02
    finally:
        master.kill()
        master.wait()


def _readme_bench_commands() -> list[list[str]]:
    section = README.read_text().split("## Benchmark", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("#", 1)[0])
            if words[:3] == [".venv/bin/python", "-m", "bench"]:
                commands.append(words[3:])
    return commands


def test_the_readme_benchmark_commands_are_accepted_as_written() -> None:
    commands = _readme_bench_commands()
    assert any("--profile" in c for c in commands), "the README shows --profile"
    for arguments in commands:
        parse_args(arguments)  # exits with a usage message on an unknown flag or row


def _table(markdown: str) -> list[dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == COLUMNS
    return [
        dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True))
        for line in lines[2:]
    ]


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def _run_bench(tmp_path: Path, *arguments: str) -> tuple[str, Path]:
    output = tmp_path / "results" / "latest.md"
    tiny = [
        "--upstreams=instant", "--duration=0.25", "--warmup=0", "--users=4",
        "--connections=4", "--workers=1", f"--output={output}",
    ]  # fmt: skip
    run = subprocess.run(
        [sys.executable, "-m", "bench", *tiny, *arguments],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return output.read_text(), output.parent


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_tiny_benchmark_reports_cpu_and_aws_calls_per_row_and_writes_a_profile(
    tmp_path: Path,
) -> None:
    report, results = _run_bench(
        tmp_path, "--exchanges=cognito,sts", "--profile=instant:token:sts:returning"
    )
    rows = _table(report)
    assert [(r["endpoint"], r["exchange"], r["handler"]) for r in rows] == [
        ("`POST /v1/token`", "`cognito`", "broker, new session each time"),
        ("`POST /v1/token`", "`cognito`", "broker, returning users"),
        ("`POST /v1/token`", "`cognito`", "naive"),
        ("`POST /v1/credentials`", "`cognito`", "broker"),
        ("`POST /v1/credentials`", "`cognito`", "naive"),
        ("`POST /v1/token`", "`sts`", "broker, new session each time"),
        ("`POST /v1/token`", "`sts`", "broker, returning users"),
        ("`POST /v1/token`", "`sts`", "naive"),
    ]
    naive_rates = {
        (r["endpoint"], r["exchange"]): _number(r["req/s"]) for r in rows if r["handler"] == "naive"
    }
    for row in rows:
        values = {column: _number(row[column]) for column in NUMERIC}
        assert values["errors"] == 0, row
        assert values["CPU ms/req"] > 0, row
        if row["handler"] == "naive":
            # on a starved machine the naive handler (a new client per request) may finish no
            # request in a quarter of a second; the brokers' rows then have no ratio
            continue
        assert values["req/s"] > 0, row
        if naive_rates[row["endpoint"], row["exchange"]] > 0:
            assert row["req/s vs naive"].endswith("x"), row
    aws = {
        (r["exchange"], r["endpoint"], r["handler"]): _number(r["AWS calls per 1k"]) for r in rows
    }
    token = "`POST /v1/token`"
    # every new session vends: one GetCredentialsForIdentity (the identity id is cached),
    # one AssumeRole; a returning user's exchange and a cached refresh call nothing
    assert aws["`cognito`", token, "broker, new session each time"] == 1000
    assert aws["`sts`", token, "broker, new session each time"] == 1000
    assert aws["`cognito`", token, "broker, returning users"] == 0
    assert aws["`sts`", token, "broker, returning users"] == 0
    assert aws["`cognito`", "`POST /v1/credentials`", "broker"] == 0
    assert aws["`cognito`", token, "naive"] == 2000
    assert aws["`sts`", token, "naive"] == 1000

    assert "1-minute load average" in report and "Options: `python -m bench" in report
    profiles = sorted(p.name for p in results.glob("profile-*"))
    assert profiles in (
        ["profile-instant-token-sts-returning.svg"],
        ["profile-instant-token-sts-returning.prof", "profile-instant-token-sts-returning.txt"],
    ), profiles
    profiler = "py-spy" if profiles[0].endswith(".svg") else "cprofile"
    assert f"Profile of `instant:token:sts:returning` ({profiler}," in report


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_without_py_spy_the_profile_is_cprofile_output_of_the_server_workers(
    tmp_path: Path,
) -> None:
    _, results = _run_bench(
        tmp_path, "--exchanges=sts", "--profile=instant:token:sts:naive", "--profiler=cprofile"
    )
    summary = (results / "profile-instant-token-sts-naive.txt").read_text()
    assert summary.startswith("cProfile of 1 workers, merged")
    # the naive handler's per-request work, seen inside the worker
    assert re.search(r"baseline\.py:\d+\(vend\)", summary), summary[:2000]
    assert (results / "profile-instant-token-sts-naive.prof").stat().st_size > 0


def test_a_failed_run_leaves_every_servers_whole_log_beside_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cause of a server's failure (a worker's traceback at start-up, say) is often far
    above the last lines printed with the error: the whole logs are kept."""

    def failing_run(options: Any, work: Path) -> Any:
        (work / "broker-25ms.log").write_text("Traceback: the worker's first words\n" * 500)
        (work / "naive-25ms.log").write_text("naive\n")
        raise RuntimeError("broker-25ms exited (3)")

    output = tmp_path / "results" / "latest.md"
    stale = output.parent / bench_run.FAILED_RUN_LOGS / "from-an-older-run.log"
    stale.parent.mkdir(parents=True)
    stale.write_text("old\n")
    monkeypatch.setattr(bench_run, "_run", failing_run)
    sigterm = signal.getsignal(signal.SIGTERM)  # main() installs its own handler
    try:
        with pytest.raises(RuntimeError, match="exited"):
            bench_run.main(["--upstreams=instant", f"--output={output}"])
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    kept = output.parent / bench_run.FAILED_RUN_LOGS
    assert sorted(p.name for p in kept.iterdir()) == ["broker-25ms.log", "naive-25ms.log"]
    assert (kept / "broker-25ms.log").read_text().count("the worker's first words") == 500
    assert str(kept) in capsys.readouterr().err
    assert not output.exists()
