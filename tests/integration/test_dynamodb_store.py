"""The DynamoDB store beyond the shared contract: expiry on read before DynamoDB's TTL
deletes an item, the TTL attribute it writes, what it sends to DynamoDB, ``store init``,
a broker on a missing table refused at start-up, and an unreachable endpoint."""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from identity.config.document import build_config
from identity.dynamodb_store import create_table
from identity.errors import ConfigError, StoreError
from identity.store import Store, open_store, validate_store_url
from identity.wiring import build_services
from service.cli import main
from service.cli.config_file import APP_LOAD_ERROR
from service.endpoints import Endpoints
from tests.fixtures.configs import SECRET_KEY, valid_config_dict
from tests.fixtures.dynamodb import sdk_environment, unique_table_name
from tests.fixtures.moto_server import AwsWorld
from tests.unit.test_config import BASE

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).with_name("chime-broker"))
INIT_HINT = "create it with `chime-broker store init --config FILE`"


@pytest.fixture(autouse=True)
def _broker_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret the config files below name (``${env:BROKER_SECRET_KEY}``)."""
    monkeypatch.setenv("BROKER_SECRET_KEY", SECRET_KEY)


@pytest.fixture
def store(dynamodb_store_url: str, aws: AwsWorld) -> Iterator[Store]:
    opened = open_store(dynamodb_store_url, region=aws.region)
    try:
        yield opened
    finally:
        opened.close()


def _table(url: str) -> str:
    return url.removeprefix("dynamodb://")


def _raw_item(aws: AwsWorld, url: str, key: str) -> dict[str, Any] | None:
    found = aws.client("dynamodb").get_item(
        TableName=_table(url), Key={"pk": {"S": key}}, ConsistentRead=True
    )
    item: dict[str, Any] | None = found.get("Item")
    return item


def _config_file(tmp_path: Path, store_url: str) -> Path:
    path = tmp_path / "broker.yaml"
    path.write_text(BASE.replace("store: memory://", f"store: {store_url}"))
    return path


# --------------------------------------------------------------------------- expiry


def test_an_expired_item_dynamodb_has_not_deleted_yet_is_absent(
    store: Store, dynamodb_store_url: str, aws: AwsWorld
) -> None:
    past = time.time() - 60
    raw = aws.client("dynamodb")
    for key in ("read", "claim", "take", "count"):
        raw.put_item(
            TableName=_table(dynamodb_store_url),
            Item={
                "pk": {"S": key},
                "v": {"B": b"41"},
                "exp": {"N": repr(past)},
                "expires_at": {"N": str(math.ceil(past))},
            },
        )
    aws.recorder.reset()

    assert store.get("read") is None
    assert store.get_many(["read", "claim"]) == [None, None]
    assert store.set_if_absent("claim", b"fresh", 30)
    assert store.get_and_delete("take") is None
    assert store.incr("count", 30) == 1

    assert store.get("claim") == b"fresh"
    assert _raw_item(aws, dynamodb_store_url, "take") is None
    counter = _raw_item(aws, dynamodb_store_url, "count")
    assert counter is not None
    assert counter["n"] == {"N": "1"} and "v" not in counter
    assert float(counter["exp"]["N"]) > time.time() + 25
    # What reached DynamoDB: a conditional put that lets an expired item be replaced, and
    # an atomic ADD refused on the expired counter, then a conditional restart at 1.
    (put,) = aws.recorder.calls("PutItem")
    assert put["ConditionExpression"] == "attribute_not_exists(#pk) OR #exp <= :now"
    assert float(put["ExpressionAttributeValues"][":now"]["N"]) > past
    add, restart = aws.recorder.calls("UpdateItem")
    assert add["UpdateExpression"] == "ADD #n :one"
    assert "#exp > :now" in add["ConditionExpression"]
    assert restart["ConditionExpression"] == "attribute_not_exists(#pk) OR #exp <= :now"
    assert restart["ExpressionAttributeValues"][":count"] == {"N": "1"}
    (delete,) = aws.recorder.calls("DeleteItem")
    assert delete["ReturnValues"] == "ALL_OLD"
    assert all(call["ConsistentRead"] for call in aws.recorder.calls("GetItem"))


def test_expires_at_is_an_integer_epoch_at_or_after_the_expiry(
    store: Store, dynamodb_store_url: str, aws: AwsWorld
) -> None:
    before = time.time()
    store.set("set", b"v", 30.2)
    assert store.set_if_absent("claimed", b"v", 30.2)
    assert store.incr("counter", 30.2) == 1
    after = time.time()
    for key in ("set", "claimed", "counter"):
        item = _raw_item(aws, dynamodb_store_url, key)
        assert item is not None
        assert re.fullmatch(r"[0-9]+", item["expires_at"]["N"]), item["expires_at"]
        expires_at, exact = int(item["expires_at"]["N"]), float(item["exp"]["N"])
        assert before + 30.2 <= exact <= after + 30.2
        assert exact <= expires_at < exact + 1


def test_increments_keep_the_counters_expiry(
    store: Store, dynamodb_store_url: str, aws: AwsWorld
) -> None:
    store.incr("hits", 30)
    first = _raw_item(aws, dynamodb_store_url, "hits")
    store.incr("hits", 300)
    second = _raw_item(aws, dynamodb_store_url, "hits")
    assert first is not None and second is not None
    assert second["n"] == {"N": "2"}
    assert (second["exp"], second["expires_at"]) == (first["exp"], first["expires_at"])


def test_get_many_reads_consistently_in_batches_of_100_keeping_order(
    store: Store, aws: AwsWorld
) -> None:
    keys = [f"key-{i}" for i in range(250)]
    for key in keys[::2]:
        store.set(key, key.encode(), 30)
    aws.recorder.reset()

    values = store.get_many([*keys, "key-0"])

    assert values == [k.encode() if i % 2 == 0 else None for i, k in enumerate(keys)] + [b"key-0"]
    batches = [
        next(iter(call["RequestItems"].values())) for call in aws.recorder.calls("BatchGetItem")
    ]
    assert [len(batch["Keys"]) for batch in batches] == [100, 100, 50]
    assert all(batch["ConsistentRead"] for batch in batches)
    assert store.get_many([]) == []


# --------------------------------------------------------------------------- fork


def _incr_in_forked_child(store: Store, results: Any) -> None:
    try:
        results.put([store.incr("forked", 30) for _ in range(20)])
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put(e)


def test_the_store_keeps_working_across_fork(store: Store) -> None:
    # The parent has built its client before the fork; each child builds its own.
    assert store.incr("forked", 30) == 1
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    children = [ctx.Process(target=_incr_in_forked_child, args=(store, results)) for _ in range(2)]
    for child in children:
        child.start()
    parent_counts = [store.incr("forked", 30) for _ in range(20)]
    reports = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=30)
    assert not [r for r in reports if isinstance(r, BaseException)], reports
    seen = sorted([1, *parent_counts, *(n for counts in reports for n in counts)])
    assert seen == list(range(1, 62))
    assert all(child.exitcode == 0 for child in children)


# --------------------------------------------------------------------------- store init


def _readme_store_init() -> list[str]:
    """The ``store init`` command of the README's shell blocks, as argv after
    ``chime-broker``."""
    commands, in_block = [], False
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif in_block and "chime-broker store init" in line:
            commands.append(shlex.split(line))
    assert len(commands) == 1, commands
    (argv,) = commands
    return argv[argv.index("store") :]


def test_store_init_creates_the_table_and_a_second_run_finds_it(
    aws: AwsWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = unique_table_name("init")
    path = _config_file(tmp_path, f"dynamodb://{table}")
    argv = _readme_store_init()
    argv[argv.index("--config") + 1] = str(path)
    dynamodb = aws.client("dynamodb")
    try:
        assert main(argv) == 0
        assert capsys.readouterr().out == (
            f"created DynamoDB table {table} in us-east-1 (on-demand, TTL on expires_at)\n"
        )
        described = dynamodb.describe_table(TableName=table)["Table"]
        assert described["TableStatus"] == "ACTIVE"
        assert described["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
        assert described["AttributeDefinitions"] == [{"AttributeName": "pk", "AttributeType": "S"}]
        assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        ttl = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
        (create,) = aws.recorder.calls("CreateTable")
        assert create["BillingMode"] == "PAY_PER_REQUEST"
        assert all(r.region == "us-east-1" for r in aws.recorder.requests())
        aws.recorder.reset()

        assert main(argv) == 0
        assert capsys.readouterr().out == (
            f"DynamoDB table {table} in us-east-1 already exists (TTL on expires_at)\n"
        )
        assert "UpdateTimeToLive" not in aws.recorder.operations()
    finally:
        dynamodb.delete_table(TableName=table)


def test_store_init_enables_ttl_on_a_table_that_exists_without_it(
    aws: AwsWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = unique_table_name("no-ttl")
    dynamodb = aws.client("dynamodb")
    dynamodb.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    try:
        assert (
            main(["store", "init", "--config", str(_config_file(tmp_path, f"dynamodb://{table}"))])
            == 0
        )
        assert "enabled TTL on expires_at" in capsys.readouterr().out
        ttl = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
        (update,) = aws.recorder.calls("UpdateTimeToLive")
        assert update["TimeToLiveSpecification"] == {"Enabled": True, "AttributeName": "expires_at"}
    finally:
        dynamodb.delete_table(TableName=table)


def test_store_init_has_nothing_to_create_for_other_stores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config_file(tmp_path, f"sqlite:///{tmp_path}/state.db")
    assert main(["store", "init", "--config", str(path)]) == 0
    assert capsys.readouterr().out == "store: sqlite:// needs no table; nothing to create\n"
    assert not (tmp_path / "state.db").exists()


def test_store_init_without_credentials_says_so_in_one_line(
    aws: AwsWorld,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    table = unique_table_name("no-keys")
    assert (
        main(["store", "init", "--config", str(_config_file(tmp_path, f"dynamodb://{table}"))]) == 1
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert f"dynamodb table {table!r} in us-east-1: CreateTable failed:" in captured.err
    assert "credentials" in captured.err
    assert aws.recorder.operations() == []


# --------------------------------------------------------------------------- start-up


@pytest.fixture
def missing_table_config(aws: AwsWorld, tmp_path: Path) -> tuple[Path, list[str]]:
    table = unique_table_name("missing")
    path = _config_file(tmp_path, f"dynamodb://{table}")
    report = [
        f"{path}: 1 problem(s)",
        f"  store (line 16): dynamodb table {table!r} does not exist in us-east-1; {INIT_HINT}",
    ]
    return path, report


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command),
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("check",), id="check"),
        pytest.param(("serve", "--bind", "127.0.0.1:0", "--workers", "1"), id="serve"),
        pytest.param(("wsgi",), id="wsgi"),
    ],
)
def test_a_broker_on_a_missing_table_is_refused_at_start_up(
    command: tuple[str, ...], missing_table_config: tuple[Path, list[str]], aws: AwsWorld
) -> None:
    path, report = missing_table_config
    if command == ("wsgi",):
        # Only what the SDK needs to reach moto, the secret and the config's name.
        result = subprocess.run(
            [sys.executable, "-c", "import wsgi"],
            env={
                "PATH": os.environ["PATH"],
                **sdk_environment(aws),
                "BROKER_SECRET_KEY": SECRET_KEY,
                "BROKER_CONFIG": str(path),
            },
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    else:
        result = _run(CLI, command[0], "--config", str(path), *command[1:])
    assert result.returncode == (APP_LOAD_ERROR if command == ("wsgi",) else 1)
    assert result.stderr.splitlines()[-len(report) :] == report
    assert "Traceback" not in result.stdout + result.stderr
    assert "GetItem" in aws.recorder.operations()


def test_check_offline_does_not_contact_aws(
    missing_table_config: tuple[Path, list[str]], aws: AwsWorld
) -> None:
    path, _ = missing_table_config
    result = _run(CLI, "check", "--offline", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "store: dynamodb" in result.stdout
    assert aws.recorder.requests() == []


def test_build_services_refuses_a_missing_table(aws: AwsWorld) -> None:
    table = unique_table_name("missing")
    config = build_config(valid_config_dict(store=f"dynamodb://{table}"))
    with pytest.raises(ConfigError) as refused:
        build_services(config, Endpoints(config.service.public_url))
    assert refused.value.problems == [
        f"store: dynamodb table {table!r} does not exist in us-east-1; {INIT_HINT}"
    ]
    # The look-up is a data-plane read (GetItem), not DescribeTable: readiness probes
    # repeat it, and DescribeTable's quota is small.
    (read,) = aws.recorder.calls("GetItem")
    assert read["TableName"] == table
    assert aws.recorder.calls("DescribeTable") == []


def test_build_services_opens_an_existing_table_in_the_configured_region(
    dynamodb_store_url: str, aws: AwsWorld
) -> None:
    config = build_config(valid_config_dict(store=dynamodb_store_url))
    services = build_services(config, Endpoints(config.service.public_url))
    try:
        services.store.set("k", b"v", 30)
        assert services.store.get("k") == b"v"
    finally:
        services.store.close()
    assert {r.region for r in aws.recorder.requests() if r.service == "dynamodb"} == {"us-east-1"}


# --------------------------------------------------------------------------- failures


def test_an_unreachable_endpoint_raises_store_error(
    closed_port: int, monkeypatch: pytest.MonkeyPatch, aws: AwsWorld
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port}")
    store = open_store("dynamodb://broker-state", region=aws.region)
    try:
        with pytest.raises(StoreError, match=r"dynamodb store broker-state: GetItem failed"):
            store.ping()
        with pytest.raises(StoreError, match=r"dynamodb store broker-state: GetItem failed"):
            store.get("k")
    finally:
        store.close()


def test_a_closed_store_refuses_work(store: Store) -> None:
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get("k")


# --------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    "url",
    [
        "dynamodb://abc",
        "dynamodb://Broker_State.v1-prod",
        "DynamoDB://state",
        "dynamodb://" + "t" * 255,
    ],
)
def test_dynamodb_table_names_that_validate(url: str) -> None:
    validate_store_url(url)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("dynamodb://", "3 to 255"),
        ("dynamodb://ab", "3 to 255"),
        ("dynamodb://" + "t" * 256, "3 to 255"),
        ("dynamodb://state table", "3 to 255"),
        ("dynamodb://state:8000", "3 to 255"),
        ("dynamodb://state/path", "without path, query or fragment"),
        ("dynamodb://state?region=eu-west-1", "without path, query or fragment"),
        ("dynamodb://state#x", "without path, query or fragment"),
    ],
)
def test_dynamodb_urls_that_are_refused(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=re.escape(problem)):
        validate_store_url(url)


def test_a_dynamodb_store_needs_a_region() -> None:
    with pytest.raises(ValueError, match="region"):
        open_store("dynamodb://broker-state")


def test_create_table_refuses_a_bad_table_name(aws: AwsWorld) -> None:
    with pytest.raises(ValueError, match="3 to 255"):
        create_table("x", region=aws.region)
    assert aws.recorder.requests() == []
