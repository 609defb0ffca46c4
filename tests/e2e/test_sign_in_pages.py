"""Pages for people in headless Chromium: a stale sign-in answer and the back button after a
login end on the broker's page with a link back to the app (not JSON); signing out at the
IdP comes back to the app; the demo page renews its credentials by itself before they
expire, and its expired state offers a button.

The page's timers run on Playwright's clock, fast-forwarded instead of waited for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from service.pages import PROBLEM_PAGE_CSP
from tests.e2e.pages import DemoPage
from tests.e2e.test_demo_page import ADA, assert_vended_for_corp_ada, broker_config
from tests.fixtures.live_server import LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MINUTE = 60_000  # Playwright's clock counts milliseconds


def corp_broker(
    live_broker: Callable[..., LiveServer], aws: Any, idp: Any, **config: Any
) -> LiveServer:
    """A broker in ``mode: demo`` whose demo page is the app: ``default_return_to`` and
    the IdP's ``post_logout_redirect_uri`` are the page."""
    idp.add_user("ada", **ADA)

    def build(url: str) -> Any:
        page = url + "/"
        idp.register_client(
            "test-client",
            redirect_uris=(f"{url}/v1/callback/corp",),
            post_logout_redirect_uris=(page,),
        )
        built = broker_config(url, aws=aws, idp=idp, mode="demo", origins=[url], **config)
        service = built.service.model_copy(update={"default_return_to": page})
        return built.model_copy(update={"service": service})

    return live_broker(build)


def sign_in_as_ada(page: DemoPage, broker: LiveServer, issuer: str) -> None:
    page.open(broker.url + "/")
    page.start_login("corp", issuer)
    page.sign_in_at_idp("Ada Lovelace")
    page.signed_in_as("Ada Lovelace")


def assert_on_the_problem_page(page: DemoPage, heading: str, app: str) -> None:
    """The broker's page: its words, and a link back that works."""
    expect(page.tab.locator("#heading")).to_have_text(heading)
    back = page.tab.locator("#back")
    expect(back).to_be_visible()
    assert back.get_attribute("href") == app
    # Styled by the served stylesheet, which the page's CSP allows.
    color = page.tab.locator("#heading").evaluate("e => getComputedStyle(e).color")
    assert color == "rgb(180, 35, 24)"
    assert page.tab.locator("body").inner_text().lstrip()[:1] != "{"
    back.click()
    page.tab.wait_for_url(app)
    page.wait_until_settled()


def test_a_stale_sign_in_answer_ends_on_a_page_with_a_way_back(
    live_broker: Callable[..., LiveServer], aws: Any, oidc_provider: Any, demo_page: DemoPage
) -> None:
    broker = corp_broker(live_broker, aws, oidc_provider)
    callbacks: list[str] = []
    demo_page.tab.on(
        "request", lambda r: callbacks.append(r.url) if "/v1/callback/corp" in r.url else None
    )
    sign_in_as_ada(demo_page, broker, oidc_provider.issuer)
    [callback] = callbacks

    response = demo_page.tab.goto(callback)
    assert response is not None and response.status == 400
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == PROBLEM_PAGE_CSP
    assert_on_the_problem_page(
        demo_page, "This sign-in link is stale or already used", broker.url + "/"
    )
    # Still signed in: the stale answer changed nothing.
    demo_page.signed_in_as("Ada Lovelace")
    assert demo_page.problems == []


def test_back_after_signing_in_then_sign_in_again_ends_on_a_page_not_json(
    live_broker: Callable[..., LiveServer], aws: Any, oidc_provider: Any, demo_page: DemoPage
) -> None:
    broker = corp_broker(live_broker, aws, oidc_provider)
    sign_in_as_ada(demo_page, broker, oidc_provider.issuer)

    demo_page.tab.go_back()
    demo_page.tab.wait_for_url(f"{oidc_provider.issuer}/authorize?*")
    demo_page.sign_in_at_idp("Ada Lovelace")
    demo_page.tab.wait_for_url(f"{broker.url}/v1/callback/corp?*")
    assert_on_the_problem_page(
        demo_page, "This sign-in link is stale or already used", broker.url + "/"
    )
    demo_page.signed_in_as("Ada Lovelace")
    assert demo_page.problems == []


def test_signing_out_at_the_idp_comes_back_to_the_app(
    live_broker: Callable[..., LiveServer], aws: Any, oidc_provider: Any, demo_page: DemoPage
) -> None:
    broker = corp_broker(live_broker, aws, oidc_provider)
    sign_in_as_ada(demo_page, broker, oidc_provider.issuer)
    demo_page.logout()
    idp_logout = demo_page.tab.locator("#idp-logout")
    expect(idp_logout).to_be_visible()
    idp_logout.click()
    demo_page.tab.wait_for_url(broker.url + "/")
    demo_page.wait_until_settled()
    expect(demo_page.tab.locator("#signed-out")).to_be_visible()
    [logout] = oidc_provider.logouts
    assert logout.redirected_to == broker.url + "/"
    assert logout.sub == "ada" and logout.id_token_hint_valid
    assert demo_page.problems == []


def test_the_demo_page_renews_its_credentials_before_they_expire(
    live_broker: Callable[..., LiveServer], aws: Any, oidc_provider: Any, demo_page: DemoPage
) -> None:
    broker = corp_broker(live_broker, aws, oidc_provider, cache_credentials=False)
    demo_page.tab.clock.install()
    sign_in_as_ada(demo_page, broker, oidc_provider.issuer)
    expect(demo_page.tab.locator("#provider")).to_have_text("Example Corp")
    first_key = demo_page.text("access-key-id")
    assert len(aws.recorder.calls("AssumeRole")) == 1

    # Ten minutes before the hour is up, the page asks again by itself.
    demo_page.tab.clock.fast_forward(MINUTE * 49)
    assert len(aws.recorder.calls("AssumeRole")) == 1
    demo_page.tab.clock.fast_forward(MINUTE * 2)
    expect(demo_page.tab.locator("#status")).to_contain_text("Renewed automatically")
    expect(demo_page.tab.locator("#access-key-id")).not_to_have_text(first_key)
    calls = aws.recorder.calls("AssumeRole")
    assert len(calls) == 2
    assert_vended_for_corp_ada(aws, calls)
    expect(demo_page.tab.locator("#expired")).to_be_hidden()
    assert demo_page.problems == []


def test_expired_credentials_offer_a_button_that_gets_new_ones(
    live_broker: Callable[..., LiveServer], aws: Any, oidc_provider: Any, demo_page: DemoPage
) -> None:
    broker = corp_broker(live_broker, aws, oidc_provider, cache_credentials=False)
    demo_page.tab.clock.install()
    sign_in_as_ada(demo_page, broker, oidc_provider.issuer)
    signed_in_at = demo_page.tab.evaluate("Date.now()")

    # The broker cannot be reached when the page tries to renew: the credentials run out.
    demo_page.tab.route("**/v1/credentials", lambda route: route.abort())
    demo_page.tab.clock.fast_forward(MINUTE * 61)
    expect(demo_page.tab.locator("#expired")).to_be_visible()
    expect(demo_page.tab.locator("#expires-in")).to_have_text("expired")
    expect(demo_page.tab.locator("#error-code")).to_have_text("network_error")
    assert len(aws.recorder.calls("AssumeRole")) == 1

    # Reachable again; the page's clock back with the broker's, then the button.
    demo_page.tab.unroute("**/v1/credentials")
    demo_page.tab.clock.set_system_time(signed_in_at / 1000)  # seconds
    demo_page.tab.locator("#renew").click()
    expect(demo_page.tab.locator("#expired")).to_be_hidden()
    expect(demo_page.tab.locator("#status")).to_contain_text("new credentials")
    expect(demo_page.tab.locator("#error")).to_be_hidden()
    assert len(aws.recorder.calls("AssumeRole")) == 2
