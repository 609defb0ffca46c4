"""``dynamodb://TABLE``: the broker's state in one DynamoDB table, shared by any number of
machines (and Lambda).

The table has the partition key ``pk`` (S) and no sort key; DynamoDB's TTL deletes items
by ``expires_at`` (integer epoch seconds, rounded up). TTL deletion runs late, so every
operation also compares the exact expiry ``exp`` with the clock: an expired item is
absent. A value lives in ``v`` (B); a counter that :meth:`DynamoDbStore.incr` has touched
lives in ``n`` (N), so increments are one atomic ``ADD``. A member map is one item with an
attribute ``m_MEMBER`` (B) per member, so adding a member is one ``SET`` of one attribute;
with the record written beside it, one ``TransactWriteItems``. :func:`create_table` creates
the table as the broker expects it (``chime-broker store init``).

The region comes from the broker config; the endpoint and credentials from the SDK's own
configuration (``AWS_ENDPOINT_URL_DYNAMODB``, ``AWS_ENDPOINT_URL``, the default chain).
"""

from __future__ import annotations

import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from identity.errors import StoreError
from identity.store_values import (
    check_member,
    check_member_write,
    check_ttl,
    check_value,
    counter_value,
)

if TYPE_CHECKING:
    from types_boto3_dynamodb.client import DynamoDBClient

__all__ = ["DynamoDbStore", "TableSetup", "create_table", "table_from_url"]

PARTITION_KEY = "pk"
TTL_ATTRIBUTE = "expires_at"
_VALUE = "v"
_COUNTER = "n"
_EXPIRY = "exp"
_MEMBER_PREFIX = "m_"

_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_BATCH_GET_LIMIT = 100
# Members one UpdateItem removes: keeps its expression well under DynamoDB's 4 KB.
_REMOVE_LIMIT = 100
# Rounds of BatchGetItem for the keys DynamoDB left unprocessed (throttling, 16 MB cap).
_BATCH_GET_ROUNDS = 8
# Attempts of the incr protocol; each lost race means another caller made progress.
_INCR_ATTEMPTS = 64
# Attempts of set_and_add_member: DynamoDB cancels a transaction that meets another one
# writing the same map item (TransactionConflict) or is throttled, and the SDK does not
# retry those; "None" is the reason given for the items that were not at fault.
_TRANSACT_ATTEMPTS = 8
_TRANSIENT_CANCELLATIONS = frozenset(
    {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "None"}
)
# A failing table answers 503 within about MAX_ATTEMPTS * (connect + read) seconds.
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 2.0
# Attempts per call, the first included: throttling and 5xx are retried once, with the
# SDK's standard backoff.
MAX_ATTEMPTS = 2
_MAX_POOL_CONNECTIONS = 64
_INIT_COMMAND = "chime-broker store init --config FILE"


def table_from_url(url: str) -> str:
    """The table ``dynamodb://TABLE`` names; ValueError when the URL is malformed."""
    rest = url.split("://", 1)[1] if "://" in url else url
    if any(mark in rest for mark in "/?#"):
        raise ValueError("dynamodb store URL is dynamodb://TABLE, without path, query or fragment")
    if _TABLE_NAME.fullmatch(rest) is None:
        raise ValueError(
            f"dynamodb store URL names table {rest!r}; a DynamoDB table name is 3 to 255 "
            "letters, digits, '_', '-' or '.'"
        )
    return rest


def _client(region: str, max_pool_connections: int = _MAX_POOL_CONNECTIONS) -> DynamoDBClient:
    config = Config(
        region_name=region,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS},
        max_pool_connections=max_pool_connections,
        user_agent_extra="chime-identity-broker",
    )
    client: DynamoDBClient = boto3.session.Session(region_name=region).client(
        "dynamodb", config=config
    )
    return client


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _number(value: float) -> str:
    return repr(float(value))


# Read by ping() and never written: store keys have a "name:" prefix, this one has none.
_PING_KEY = "ping"


class DynamoDbStore:
    """``dynamodb://TABLE`` in ``region``. The client is built on first use in each
    process, so a store made before a fork works in the children."""

    def __init__(self, table: str, *, region: str, clock: Callable[[], float] = time.time) -> None:
        self._table = table
        self._region = region
        self._clock = clock
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._dynamodb: DynamoDBClient | None = None
        self._closed = False

    @property
    def table(self) -> str:
        """The table's name."""
        return self._table

    def _connection(self) -> DynamoDBClient:
        with self._lock:
            if self._closed:
                raise StoreError(f"dynamodb store {self._table}: closed")
            if self._pid != os.getpid():
                # The parent's client and its connections stay with the parent.
                self._dynamodb, self._pid = None, os.getpid()
            if self._dynamodb is None:
                self._dynamodb = _client(self._region)
            return self._dynamodb

    @contextmanager
    def _errors(self, operation: str) -> Iterator[DynamoDBClient]:
        try:
            yield self._connection()
        except ClientError as e:
            if _error_code(e) == "ResourceNotFoundException":
                raise StoreError(self._missing_table()) from e
            raise StoreError(f"dynamodb store {self._table}: {operation} failed: {e}") from e
        except BotoCoreError as e:
            raise StoreError(f"dynamodb store {self._table}: {operation} failed: {e}") from e

    def _missing_table(self) -> str:
        return (
            f"dynamodb table {self._table!r} does not exist in {self._region}; "
            f"create it with `{_INIT_COMMAND}`"
        )

    def _item(self, key: str, value: bytes, expires: float) -> dict[str, Any]:
        return {
            PARTITION_KEY: {"S": key},
            _VALUE: {"B": value},
            _EXPIRY: {"N": _number(expires)},
            TTL_ATTRIBUTE: {"N": str(math.ceil(expires))},
        }

    def _live_value(self, item: Mapping[str, Any] | None, now: float) -> bytes | None:
        if not item or float(item[_EXPIRY]["N"]) <= now:
            return None
        if _COUNTER in item:
            return str(int(item[_COUNTER]["N"])).encode("ascii")
        return bytes(item[_VALUE]["B"])

    def get(self, key: str) -> bytes | None:
        with self._errors("GetItem") as dynamodb:
            found = dynamodb.get_item(
                TableName=self._table, Key={PARTITION_KEY: {"S": key}}, ConsistentRead=True
            )
        return self._live_value(found.get("Item"), self._clock())

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        wanted = list(dict.fromkeys(keys))
        items: dict[str, Mapping[str, Any]] = {}
        with self._errors("BatchGetItem") as dynamodb:
            for start in range(0, len(wanted), _BATCH_GET_LIMIT):
                chunk = wanted[start : start + _BATCH_GET_LIMIT]
                request: dict[str, Any] = {
                    self._table: {
                        "Keys": [{PARTITION_KEY: {"S": key}} for key in chunk],
                        "ConsistentRead": True,
                    }
                }
                for round_ in range(_BATCH_GET_ROUNDS):
                    answer = dynamodb.batch_get_item(RequestItems=request)
                    for item in answer.get("Responses", {}).get(self._table, []):
                        items[item[PARTITION_KEY]["S"]] = item
                    request = dict(answer.get("UnprocessedKeys") or {})
                    if not request:
                        break
                    time.sleep(min(0.05 * 2**round_, 1.0))
                else:
                    raise StoreError(
                        f"dynamodb store {self._table}: BatchGetItem left keys unprocessed "
                        f"after {_BATCH_GET_ROUNDS} rounds"
                    )
        now = self._clock()
        return [self._live_value(items.get(key), now) for key in keys]

    def set(self, key: str, value: bytes, ttl: float) -> None:
        check_value(value)
        check_ttl(ttl)
        with self._errors("PutItem") as dynamodb:
            dynamodb.put_item(
                TableName=self._table, Item=self._item(key, value, self._clock() + ttl)
            )

    def set_if_absent(self, key: str, value: bytes, ttl: float) -> bool:
        return self._put_if(key, value, ttl, "attribute_not_exists(#pk) OR #exp <= :now")

    def replace(self, key: str, value: bytes, ttl: float) -> bool:
        return self._put_if(key, value, ttl, "attribute_exists(#pk) AND #exp > :now")

    def compare_and_set(self, key: str, expected: bytes, value: bytes, ttl: float) -> bool:
        check_value(expected)
        return self._put_if(key, value, ttl, "#v = :expected AND #exp > :now", expected)

    def _put_if(
        self, key: str, value: bytes, ttl: float, condition: str, expected: bytes | None = None
    ) -> bool:
        """Put ``key`` when ``condition`` (over ``#pk``, ``#v``, ``#exp``, ``:now`` and
        ``:expected``) holds for the stored item; False when it does not."""
        check_value(value)
        check_ttl(ttl)
        now = self._clock()
        names = {"#pk": PARTITION_KEY, "#exp": _EXPIRY}
        values: dict[str, Any] = {":now": {"N": _number(now)}}
        if expected is not None:
            names["#v"] = _VALUE
            values[":expected"] = {"B": expected}
        with self._errors("PutItem") as dynamodb:
            try:
                dynamodb.put_item(
                    TableName=self._table,
                    Item=self._item(key, value, now + ttl),
                    ConditionExpression=condition,
                    ExpressionAttributeNames={k: v for k, v in names.items() if k in condition},
                    ExpressionAttributeValues=values,
                )
            except ClientError as e:
                if _error_code(e) == "ConditionalCheckFailedException":
                    return False
                raise
        return True

    def get_and_delete(self, key: str) -> bytes | None:
        with self._errors("DeleteItem") as dynamodb:
            old = dynamodb.delete_item(
                TableName=self._table, Key={PARTITION_KEY: {"S": key}}, ReturnValues="ALL_OLD"
            )
        return self._live_value(old.get("Attributes"), self._clock())

    def delete(self, key: str) -> None:
        with self._errors("DeleteItem") as dynamodb:
            dynamodb.delete_item(TableName=self._table, Key={PARTITION_KEY: {"S": key}})

    def set_and_add_member(
        self,
        key: str,
        value: bytes,
        ttl: float,
        map_key: str,
        member: str,
        member_value: bytes,
        map_ttl: float,
    ) -> None:
        check_member_write(value, ttl, member, member_value, map_ttl)
        with self._errors("TransactWriteItems") as dynamodb:
            for attempt in range(_TRANSACT_ATTEMPTS):
                reasons = self._set_and_add_member_once(
                    dynamodb, key, value, ttl, map_key, member, member_value, map_ttl
                )
                if not reasons:
                    return
                if "ConditionalCheckFailed" in reasons:
                    self._drop_expired_map(dynamodb, map_key)
                elif set(reasons) <= _TRANSIENT_CANCELLATIONS:
                    time.sleep(random.uniform(0, min(0.02 * 2**attempt, 0.5)))  # noqa: S311
                else:
                    raise StoreError(
                        f"dynamodb store {self._table}: TransactWriteItems cancelled: {reasons}"
                    )
        raise StoreError(
            f"dynamodb store {self._table}: adding to map {map_key!r} lost "
            f"{_TRANSACT_ATTEMPTS} races in a row"
        )

    def _set_and_add_member_once(
        self,
        dynamodb: DynamoDBClient,
        key: str,
        value: bytes,
        ttl: float,
        map_key: str,
        member: str,
        member_value: bytes,
        map_ttl: float,
    ) -> list[str]:
        """One TransactWriteItems; the cancellation reasons' codes, [] when it went through.

        The map's update is conditional on the map being live or absent: an expired item
        that DynamoDB's TTL has not deleted yet still holds its old members."""
        now = self._clock()
        map_expires = now + map_ttl
        try:
            dynamodb.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": self._table, "Item": self._item(key, value, now + ttl)}},
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": {PARTITION_KEY: {"S": map_key}},
                            "UpdateExpression": "SET #m = :m, #exp = :exp, #ttl = :ttl",
                            "ConditionExpression": "attribute_not_exists(#pk) OR #exp > :now",
                            "ExpressionAttributeNames": {
                                "#m": _MEMBER_PREFIX + member,
                                "#pk": PARTITION_KEY,
                                "#exp": _EXPIRY,
                                "#ttl": TTL_ATTRIBUTE,
                            },
                            "ExpressionAttributeValues": {
                                ":m": {"B": member_value},
                                ":exp": {"N": _number(map_expires)},
                                ":ttl": {"N": str(math.ceil(map_expires))},
                                ":now": {"N": _number(now)},
                            },
                        }
                    },
                ]
            )
        except ClientError as e:
            if _error_code(e) != "TransactionCanceledException":
                raise
            reasons = cast("list[Mapping[str, Any]]", e.response.get("CancellationReasons", []))
            codes = [str(reason.get("Code", "")) for reason in reasons]
            return codes or ["unknown"]
        return []

    def _drop_expired_map(self, dynamodb: DynamoDBClient, map_key: str) -> None:
        """Delete the map item at ``map_key`` if it has expired (and not been renewed)."""
        try:
            dynamodb.delete_item(
                TableName=self._table,
                Key={PARTITION_KEY: {"S": map_key}},
                ConditionExpression="#exp <= :now",
                ExpressionAttributeNames={"#exp": _EXPIRY},
                ExpressionAttributeValues={":now": {"N": _number(self._clock())}},
            )
        except ClientError as e:
            if _error_code(e) != "ConditionalCheckFailedException":
                raise

    def members(self, map_key: str) -> dict[str, bytes]:
        with self._errors("GetItem") as dynamodb:
            found = dynamodb.get_item(
                TableName=self._table, Key={PARTITION_KEY: {"S": map_key}}, ConsistentRead=True
            )
        item = found.get("Item")
        if not item or _EXPIRY not in item or float(item[_EXPIRY]["N"]) <= self._clock():
            return {}
        return {
            name.removeprefix(_MEMBER_PREFIX): bytes(attribute["B"])
            for name, attribute in item.items()
            if name.startswith(_MEMBER_PREFIX)
        }

    def remove_members(self, map_key: str, members: Sequence[str]) -> None:
        for member in members:
            check_member(member)
        wanted = list(dict.fromkeys(members))
        with self._errors("UpdateItem") as dynamodb:
            for start in range(0, len(wanted), _REMOVE_LIMIT):
                chunk = wanted[start : start + _REMOVE_LIMIT]
                names = {f"#m{i}": _MEMBER_PREFIX + member for i, member in enumerate(chunk)}
                try:
                    dynamodb.update_item(
                        TableName=self._table,
                        Key={PARTITION_KEY: {"S": map_key}},
                        UpdateExpression="REMOVE " + ", ".join(names),
                        # Without it, an update of an absent map would create an item.
                        ConditionExpression="attribute_exists(#pk)",
                        ExpressionAttributeNames={**names, "#pk": PARTITION_KEY},
                    )
                except ClientError as e:
                    if _error_code(e) != "ConditionalCheckFailedException":
                        raise

    def incr(self, key: str, ttl: float) -> int:
        check_ttl(ttl)
        with self._errors("UpdateItem") as dynamodb:
            for _ in range(_INCR_ATTEMPTS):
                count = self._incr_once(dynamodb, key, ttl)
                if count is not None:
                    return count
        raise StoreError(
            f"dynamodb store {self._table}: incr of {key!r} lost {_INCR_ATTEMPTS} races in a row"
        )

    def _incr_once(self, dynamodb: DynamoDBClient, key: str, ttl: float) -> int | None:
        """One attempt: add to a live counter, else start it or turn a live value into
        a counter. None when another caller changed the item meanwhile."""
        now = self._clock()
        names = {"#pk": PARTITION_KEY, "#exp": _EXPIRY, "#n": _COUNTER}
        try:
            added = dynamodb.update_item(
                TableName=self._table,
                Key={PARTITION_KEY: {"S": key}},
                UpdateExpression="ADD #n :one",
                ConditionExpression=(
                    "attribute_exists(#pk) AND #exp > :now AND attribute_exists(#n)"
                ),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={":one": {"N": "1"}, ":now": {"N": _number(now)}},
                ReturnValues="UPDATED_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return int(added["Attributes"][_COUNTER]["N"])
        except ClientError as e:
            if _error_code(e) != "ConditionalCheckFailedException":
                raise
            old = cast("Mapping[str, Any]", e.response.get("Item") or {})
        if old and float(old[_EXPIRY]["N"]) > now:
            if _COUNTER in old:
                return None  # became a live counter since: add to it
            # A live value written by set(): it becomes a counter, keeping its expiry.
            count = counter_value(key, bytes(old[_VALUE]["B"])) + 1
            update: dict[str, Any] = {
                "UpdateExpression": "SET #n = :count REMOVE #v",
                "ConditionExpression": "#v = :old AND #exp = :exp",
                "ExpressionAttributeNames": {"#n": _COUNTER, "#v": _VALUE, "#exp": _EXPIRY},
                "ExpressionAttributeValues": {
                    ":count": {"N": str(count)},
                    ":old": old[_VALUE],
                    ":exp": old[_EXPIRY],
                },
            }
        else:
            # The counter's life starts now, not when the refused ADD was sent.
            now = self._clock()
            count, expires = 1, now + ttl
            update = {
                "UpdateExpression": "SET #n = :count, #exp = :exp, #ttl = :ttl REMOVE #v",
                "ConditionExpression": "attribute_not_exists(#pk) OR #exp <= :now",
                "ExpressionAttributeNames": {
                    "#pk": PARTITION_KEY,
                    "#n": _COUNTER,
                    "#v": _VALUE,
                    "#exp": _EXPIRY,
                    "#ttl": TTL_ATTRIBUTE,
                },
                "ExpressionAttributeValues": {
                    ":count": {"N": "1"},
                    ":exp": {"N": _number(expires)},
                    ":ttl": {"N": str(math.ceil(expires))},
                    ":now": {"N": _number(now)},
                },
            }
        try:
            dynamodb.update_item(TableName=self._table, Key={PARTITION_KEY: {"S": key}}, **update)
        except ClientError as e:
            if _error_code(e) == "ConditionalCheckFailedException":
                return None
            raise
        return count

    def ping(self) -> None:
        """One read of a key nothing writes: a data-plane call (``/readyz`` probes often,
        and DescribeTable's control-plane quota is small) that also finds a missing table."""
        with self._errors("GetItem") as dynamodb:
            dynamodb.get_item(
                TableName=self._table,
                Key={PARTITION_KEY: {"S": _PING_KEY}},
                ProjectionExpression="#pk",
                ExpressionAttributeNames={"#pk": PARTITION_KEY},
            )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client = self._dynamodb if self._pid == os.getpid() else None
            self._dynamodb = None
        if client is not None:
            client.close()


# --------------------------------------------------------------------------- table


@dataclass(frozen=True)
class TableSetup:
    """What :func:`create_table` did: ``created`` the table, and/or ``ttl_enabled`` on it."""

    table: str
    region: str
    created: bool
    ttl_enabled: bool


def create_table(
    table: str, *, region: str, wait_delay: float = 2.0, wait_attempts: int = 150
) -> TableSetup:
    """Create ``table`` as the store expects it (key ``pk`` S, on-demand billing, TTL on
    ``expires_at``) unless it exists; wait until it is ACTIVE; enable TTL when it is off.

    Idempotent. Raises StoreError naming the table and the failed operation.
    """
    table_from_url(f"dynamodb://{table}")
    dynamodb = _client(region, max_pool_connections=1)
    operation = "CreateTable"
    try:
        created = True
        try:
            dynamodb.create_table(
                TableName=table,
                AttributeDefinitions=[{"AttributeName": PARTITION_KEY, "AttributeType": "S"}],
                KeySchema=[{"AttributeName": PARTITION_KEY, "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
        except ClientError as e:
            if _error_code(e) != "ResourceInUseException":
                raise
            created = False
        operation = "DescribeTable"
        dynamodb.get_waiter("table_exists").wait(
            TableName=table,
            WaiterConfig={"Delay": max(1, round(wait_delay)), "MaxAttempts": wait_attempts},
        )
        operation = "DescribeTimeToLive"
        ttl = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
        status, attribute = ttl.get("TimeToLiveStatus"), ttl.get("AttributeName")
        if status in ("ENABLED", "ENABLING"):
            if attribute != TTL_ATTRIBUTE:
                raise StoreError(
                    f"dynamodb table {table!r}: TTL is on attribute {attribute!r}; the store "
                    f"needs it on {TTL_ATTRIBUTE!r}"
                )
            return TableSetup(table, region, created=created, ttl_enabled=False)
        operation = "UpdateTimeToLive"
        dynamodb.update_time_to_live(
            TableName=table,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
        )
        return TableSetup(table, region, created=created, ttl_enabled=True)
    except (ClientError, BotoCoreError) as e:
        raise StoreError(f"dynamodb table {table!r} in {region}: {operation} failed: {e}") from e
    finally:
        dynamodb.close()
