"""Three ``chime-broker serve`` processes, A, B and C, on one store behave as one broker.

They share one config file (one ``service.secret_key``, one ``public_url``: A's address,
as the address of a load balancer would be) and one store: a Redis database on a real
redis-server, or a DynamoDB table in the moto server made with ``chime-broker store init``.
Each runs one gevent worker. The test plays the load balancer: it sends each request to the
instance it names. The instances start once per store and every scenario runs against them;
the SIGKILL scenario starts A again on its port, so the scenarios run in any order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import yaml

from identity.providers.guest import OPEN_GUESTS_PER_MINUTE
from service.demo.aws_world import USER_TAG, AwsResources
from service.demo.dev_idp import DevIdentityProvider
from tests.conftest import free_port
from tests.fixtures.apps import broker_config_dict
from tests.fixtures.configs import provider_dict
from tests.fixtures.dynamodb import unique_table_name
from tests.fixtures.moto_server import AwsWorld, MotoServer, is_foreign_aws_variable, sdk_settings
from tests.fixtures.recorder import sts_tags
from tests.fixtures.redis_server import RedisServer
from tests.fixtures.saml_idp import SamlIdp, encode
from tests.fixtures.serve import ServeProcess, launch
from tests.integration import test_browser_login as oidc_login
from tests.integration import test_saml_login as saml_login
from tests.integration.test_guests import invite, invited_guests, open_guests

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("chime-broker"))
MOBILE_CLIENT = "mobile-app"
# A database of its own: other tests empty database 0 of the session's redis-server.
REDIS_DATABASE = 7


class Cluster:
    """Instances A, B, C (0, 1, 2) of one broker, and the parts they talk to."""

    def __init__(
        self, config: Path, env: dict[str, str], idp: DevIdentityProvider, saml: SamlIdp
    ) -> None:
        self.config = config
        self.env = env
        self.idp = idp
        self.saml = saml
        self.instances: list[ServeProcess] = []

    def start(self, ports: list[int]) -> None:
        """Start one instance per port, all at once, and wait until each answers."""
        self.instances = [self._launch(port) for port in ports]
        for instance in self.instances:
            instance.ready()

    def _launch(self, port: int) -> ServeProcess:
        return launch(CLI, self.config, workers=1, env=self.env, port=port)

    def url(self, n: int) -> str:
        return self.instances[n].url

    def revive(self) -> None:
        """Start every instance that has died again, on its own port."""
        for n, instance in enumerate(self.instances):
            if instance.process.poll() is not None:
                instance.stop()
                self.instances[n] = self._launch(int(instance.url.rsplit(":", 1)[1]))
                self.instances[n].ready()

    def stop(self) -> None:
        """Stop every instance; they drain at the same time."""
        for instance in self.instances:
            if instance.process.poll() is None:
                instance.process.terminate()
        for instance in self.instances:
            instance.stop()

    def open_session(self, n: int, sub: str) -> dict[str, Any]:
        """``POST /v1/token`` on instance ``n`` with an id token of ``sub``: the body."""
        id_token = self.idp.mint_id_token({"sub": sub}, audience=MOBILE_CLIENT, lifetime=3600)
        response = requests.post(
            f"{self.url(n)}/v1/token", json={"provider": "mobile", "id_token": id_token}, timeout=30
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def bearer(self, n: int, path: str, token: str) -> requests.Response:
        """``POST path`` on instance ``n`` with the broker session ``token``."""
        return requests.post(
            f"{self.url(n)}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def refresh(self, n: int, token: str) -> requests.Response:
        return self.bearer(n, "/v1/credentials", token)

    def guest(self, n: int, body: dict[str, Any], address: str | None = None) -> requests.Response:
        """``POST /v1/guest`` on instance ``n``, through a proxy that saw ``address``."""
        headers = {} if address is None else {"X-Forwarded-For": address}
        return requests.post(f"{self.url(n)}/v1/guest", json=body, headers=headers, timeout=30)


def config_document(
    public_url: str, store: str, resources: AwsResources, idp: DevIdentityProvider, saml: SamlIdp
) -> dict[str, Any]:
    """One broker: mobile id tokens, browser and native logins (OIDC and SAML), invited and
    open guests; every provider vends with STS. One proxy hop is trusted, as behind a load
    balancer."""
    return broker_config_dict(
        aws__region=resources.region,
        aws__sts__role_arn=resources.user_role_arn,
        chime__app_instance_arn=resources.app_instance_arn,
        chime__user_tag=USER_TAG,
        service__public_url=public_url,
        service__session_lifetime="2h",
        service__allowed_origins=[oidc_login.SPA],
        service__allowed_return_to=[oidc_login.SPA_HOME, oidc_login.NATIVE],
        service__default_return_to=oidc_login.SPA_HOME,
        service__trusted_proxies=1,
        store=store,
        providers=[
            provider_dict(
                "oidc",
                name="mobile",
                issuer=idp.issuer,
                client_id=MOBILE_CLIENT,
                exchange="sts",
                map={"user_id": "mobile-{sub}"},
            ),
            provider_dict(
                "oidc",
                issuer=idp.issuer,
                client_id=oidc_login.CLIENT_ID,
                client_secret=oidc_login.CLIENT_SECRET,
                exchange="sts",
            ),
            provider_dict(
                "saml",
                idp_metadata_url=saml.metadata_url,
                sp_entity_id=f"{public_url}/v1/saml/corp/metadata",
            ),
            invited_guests(),
            open_guests(),
        ],
    )


def redis_store(stack: ExitStack, server: RedisServer) -> str:
    """A Redis database of the session's redis-server, emptied now and when the instances
    are gone."""
    url = f"{server.url.rsplit('/', 1)[0]}/{REDIS_DATABASE}"
    client = redis.Redis.from_url(url)
    stack.callback(client.close)
    client.flushdb()
    stack.callback(client.flushdb)
    return url


def create_table(stack: ExitStack, config: Path, env: dict[str, str], moto: MotoServer) -> None:
    """``chime-broker store init`` for the config's DynamoDB table, deleted when the
    instances are gone."""
    init = subprocess.run(
        [CLI, "store", "init", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, init.stderr
    table = yaml.safe_load(config.read_text())["store"].removeprefix("dynamodb://")
    dynamodb = moto.boto_session.client("dynamodb", endpoint_url=moto.endpoint_url)
    stack.callback(dynamodb.close)
    stack.callback(lambda: dynamodb.delete_table(TableName=table))


@pytest.fixture(scope="module", params=["redis", "dynamodb"])
def cluster(
    request: pytest.FixtureRequest,
    moto_server: MotoServer,
    aws_resources: AwsResources,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    env = {k: v for k, v in os.environ.items() if not is_foreign_aws_variable(k)}
    env.update(sdk_settings(moto_server))
    with ExitStack() as stack:
        idp = stack.enter_context(DevIdentityProvider())
        saml = SamlIdp()
        stack.callback(saml.stop)
        if request.param == "redis":
            store = redis_store(stack, request.getfixturevalue("redis_server"))
        else:
            store = f"dynamodb://{unique_table_name()}"
        ports = [free_port() for _ in range(3)]
        public_url = f"http://127.0.0.1:{ports[0]}"
        idp.register_client(MOBILE_CLIENT)
        idp.register_client(
            oidc_login.CLIENT_ID,
            client_secret=oidc_login.CLIENT_SECRET,
            redirect_uris=[f"{public_url}/v1/callback/okta"],
        )
        path = tmp_path_factory.mktemp(f"cluster-{request.param}") / "broker.yaml"
        path.write_text(
            yaml.safe_dump(config_document(public_url, store, aws_resources, idp, saml))
        )
        if request.param == "dynamodb":
            create_table(stack, path, env, moto_server)
        cluster = Cluster(path, env, idp, saml)
        stack.callback(cluster.stop)
        cluster.start(ports)
        yield cluster


@pytest.fixture
def broker(cluster: Cluster) -> Cluster:
    """The three instances, each running (one a scenario killed is started again)."""
    cluster.revive()
    return cluster


def vending_calls(aws: AwsWorld) -> list[str | None]:
    """The operations the instances sent to AWS for credentials (not the store's DynamoDB)."""
    return [r.operation for r in aws.recorder.requests() if r.service != "dynamodb"]


def test_a_session_opened_on_one_instance_refreshes_on_the_others_and_ends_on_all(
    broker: Cluster, aws: AwsWorld
) -> None:
    sub = f"ada-{uuid.uuid4().hex[:8]}"
    opened = broker.open_session(0, sub)
    token = opened["broker_session"]["token"]
    [assume_role] = aws.recorder.calls("AssumeRole")
    assert assume_role["RoleArn"] == aws.user_role_arn
    assert assume_role["SourceIdentity"] == f"mobile-{sub}"
    assert sts_tags(assume_role) == {aws.user_tag: f"mobile-{sub}"}
    aws.recorder.reset()

    for n in (1, 2):
        refreshed = broker.refresh(n, token)
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.json()["user_id"] == f"mobile-{sub}"
        # The credentials A vended and cached in the store: no call to AWS.
        assert refreshed.json()["credentials"] == opened["credentials"]
    assert vending_calls(aws) == []

    out = broker.bearer(1, "/v1/logout", token)
    assert out.status_code == 200, out.text
    assert out.json() == {"end_session_url": None}
    for n in (0, 2, 1):
        oidc_login.assert_problem(broker.refresh(n, token), 401, "unauthenticated")
    assert vending_calls(aws) == []


def test_an_invite_used_on_one_instance_is_refused_by_another(
    broker: Cluster, aws: AwsWorld
) -> None:
    token = invite({"name": "Ada"})
    admitted = broker.guest(0, {"provider": "guests", "invite": token})
    assert admitted.status_code == 200, admitted.text
    [assume_role] = aws.recorder.calls("AssumeRole")
    assert assume_role["SourceIdentity"] == admitted.json()["user_id"]
    aws.recorder.reset()

    for n in (1, 2):
        replayed = broker.guest(n, {"provider": "guests", "invite": token})
        oidc_login.assert_problem(replayed, 401, "invalid_token")
        assert replayed.json()["detail"] == "invite already used"
    assert vending_calls(aws) == []


def test_a_saml_assertion_accepted_by_one_instance_is_refused_by_another(
    broker: Cluster, aws: AwsWorld
) -> None:
    at_a = saml_login.Browser(broker.instances[0], broker.saml)
    login = at_a.begin(return_to=oidc_login.SPA_HOME)
    captured = encode(saml_login.answer(at_a, login, assertion_id=f"_{uuid.uuid4().hex}"))
    accepted = at_a.post_acs(captured, login.relay_state)
    assert accepted.status_code == 302, accepted.text
    assert accepted.headers["Location"] == oidc_login.SPA_HOME
    assert at_a.http.cookies.get(saml_login.COOKIE)

    at_b = saml_login.Browser(broker.instances[1], broker.saml)
    # As it was posted: its sign-in transaction is spent.
    oidc_login.assert_problem(at_b.post_acs(captured, login.relay_state), 401, "invalid_token")
    # Under a sign-in B began itself: the assertion id is spent.
    own = at_b.begin(return_to=oidc_login.SPA_HOME)
    replayed = at_b.post_acs(captured, own.relay_state)
    saml_login.assert_error_redirect(replayed, "invalid_token")
    assert at_b.http.cookies.get(saml_login.COOKIE) is None
    assert at_b.session_status() == 401
    assert vending_calls(aws) == []


def test_a_native_code_redeemed_on_one_instance_is_refused_by_another(
    broker: Cluster, aws: AwsWorld
) -> None:
    at_a = oidc_login.Browser(broker.instances[0])
    code, verifier = oidc_login.native_login(at_a, broker.idp)
    redeemed = oidc_login.exchange_code(broker.instances[0], code, verifier)
    assert redeemed.status_code == 200, redeemed.text
    assert redeemed.json()["user_id"] == f"okta-{oidc_login.ALICE_SUB}"
    aws.recorder.reset()

    for n in (1, 2):
        again = oidc_login.exchange_code(broker.instances[n], code, verifier)
        oidc_login.assert_problem(again, 400, "invalid_request")
    assert vending_calls(aws) == []
    # The session the code opened on A refreshes on B.
    assert broker.refresh(1, redeemed.json()["broker_session"]["token"]).status_code == 200


def test_the_open_guest_limit_counts_sign_ins_at_every_instance(
    broker: Cluster, aws: AwsWorld
) -> None:
    lobby = {"provider": "lobby"}
    # The limit counts per wall-clock minute: an attempt that spans two starts again from
    # another address.
    for attempt in range(3):
        address = f"198.51.100.{attempt + 1}"
        aws.recorder.reset()
        minute = int(time.time() // 60)
        admitted = [broker.guest(n % 3, lobby, address) for n in range(OPEN_GUESTS_PER_MINUTE)]
        refused = [broker.guest(n, lobby, address) for n in (1, 2, 0)]
        if int(time.time() // 60) == minute:
            break
    else:
        pytest.fail("three attempts in a row spanned a minute boundary")

    assert [r.status_code for r in admitted] == [200] * OPEN_GUESTS_PER_MINUTE
    for response in refused:
        oidc_login.assert_problem(response, 429, "rate_limited")
        assert int(response.headers["Retry-After"]) in range(1, 61)
    assert vending_calls(aws) == ["AssumeRole"] * OPEN_GUESTS_PER_MINUTE
    assert broker.guest(2, lobby, "203.0.113.9").status_code == 200


def test_after_an_instance_is_killed_the_others_serve_its_sessions(
    broker: Cluster, aws: AwsWorld
) -> None:
    tokens = [
        broker.open_session(0, f"kay-{uuid.uuid4().hex[:8]}")["broker_session"]["token"]
        for _ in range(3)
    ]
    statuses: list[int] = []
    failures: list[BaseException] = []
    progress = threading.Condition()
    stop = threading.Event()

    def refresh_loop() -> None:
        # Round after round over B and C, as a load balancer spreads the clients' refreshes.
        while not stop.is_set():
            for n, token in enumerate(tokens):
                try:
                    status = broker.refresh(1 + n % 2, token).status_code
                except requests.RequestException as e:
                    failures.append(e)
                    status = 0
                with progress:
                    statuses.append(status)
                    progress.notify_all()

    def wait_for_refreshes(count: int) -> None:
        with progress:
            assert progress.wait_for(lambda: len(statuses) >= count, timeout=60), statuses

    survivors = broker.instances[1:]
    logged_before = [len(survivor.output()) for survivor in survivors]
    loop = threading.Thread(target=refresh_loop, name="refresh-loop")
    loop.start()
    try:
        wait_for_refreshes(len(tokens))
        broker.instances[0].kill()
        assert broker.instances[0].process.returncode == -signal.SIGKILL
        wait_for_refreshes(len(statuses) + 2 * len(tokens))
    finally:
        stop.set()
        loop.join(timeout=60)
    assert failures == []
    assert set(statuses) == {200}, statuses
    with pytest.raises(requests.ConnectionError):
        broker.refresh(0, tokens[0])
    for token in tokens:
        assert [broker.refresh(n, token).status_code for n in (1, 2)] == [200, 200]
    # Each session vended once, on A; B and C served the credentials A cached in the store.
    assert vending_calls(aws) == ["AssumeRole"] * len(tokens)
    for survivor, start in zip(survivors, logged_before, strict=True):
        logged = survivor.output()[start:]
        assert '"status":200' in logged
        assert '"level":"error"' not in logged and "Traceback" not in logged

    # A, started again on its port, serves the sessions it opened before it died.
    broker.revive()
    assert [broker.refresh(0, token).status_code for token in tokens] == [200] * len(tokens)
