"""What the browser tests drive and serve: the demo page as a person uses it, and the same
page served from a second origin, as an SPA author deploys it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from playwright.sync_api import ConsoleMessage, Frame, Page, expect
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

# -- the page, as a person uses it ---------------------------------------------------------


@dataclass
class DemoPage:
    """The demo page in a browser tab, driven the way a person would drive it."""

    tab: Page
    navigations: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        def record(frame: Frame) -> None:
            if frame == self.tab.main_frame:
                self.navigations.append(frame.url)

        def console(message: ConsoleMessage) -> None:
            # A 401 from GET /v1/session is how the page learns that nobody is signed in;
            # the browser logs every non-2xx fetch, which is no problem of the page.
            if message.type == "error" and not message.text.startswith("Failed to load"):
                self.problems.append(message.text)

        self.tab.on("framenavigated", record)
        self.tab.on("console", console)
        self.tab.on("pageerror", lambda error: self.problems.append(f"uncaught: {error}"))

    def open(self, url: str) -> None:
        self.tab.goto(url)
        self.wait_until_settled()

    def wait_until_settled(self) -> None:
        """Until the page has decided whether someone is signed in."""
        expect(self.tab.locator("#loading")).to_be_hidden()

    def provider_buttons(self) -> list[str]:
        expect(self.tab.locator("#providers button").first).to_be_visible()
        return self.tab.locator("#providers button").all_inner_texts()

    def start_login(self, provider: str, idp_issuer: str) -> None:
        """Click the provider's button and arrive at the IdP's login page."""
        self.tab.locator(f'#providers button[data-provider="{provider}"]').click()
        self.tab.wait_for_url(f"{idp_issuer}/authorize?*")

    def sign_in_at_idp(self, user_label: str) -> None:
        """On the development IdP's page: pick the user and press Sign in."""
        self.tab.get_by_label(user_label).check()
        self.tab.get_by_role("button", name="Sign in").click()

    def cancel_at_idp(self) -> None:
        self.tab.get_by_role("button", name="Cancel").click()

    def text(self, element_id: str) -> str:
        return self.tab.locator(f"#{element_id}").inner_text().strip()

    def signed_in_as(self, display_name: str) -> None:
        expect(self.tab.locator("#signed-in")).to_be_visible()
        expect(self.tab.locator("#display-name")).to_have_text(display_name)

    def refresh(self) -> str:
        """Press "Refresh credentials"; returns the status line it leaves."""
        self.tab.locator("#refresh").click()
        expect(self.tab.locator("#status")).to_contain_text("Refreshed at")
        return self.text("status")

    def logout(self) -> None:
        self.tab.locator("#logout").click()
        expect(self.tab.locator("#signed-out")).to_be_visible()

    def fetch_status(self, url: str, method: str = "GET") -> int | str:
        """What a credentialed fetch from this page gets: the status, or the browser's
        refusal (a CORS failure never reaches the script as a status)."""
        result: int | str = self.tab.evaluate(
            """async ([url, method]) => {
                try {
                    const r = await fetch(url, {method, credentials: "include"});
                    return r.status;
                } catch (e) {
                    return "refused: " + e.name;
                }
            }""",
            [url, method],
        )
        return result


# -- an SPA on a second origin -------------------------------------------------------------


class SpaServer:
    """The demo page's files on their own loopback origin, pointed at a broker.

    ``index.html`` gets the broker's URL in ``<meta name="broker-url">`` and every response
    a CSP whose ``connect-src`` is that broker: what an SPA author deploys.
    """

    def __init__(self) -> None:
        self.broker_url = ""
        self._server: BaseWSGIServer = make_server("127.0.0.1", 0, self._wsgi, threaded=True)
        self.origin = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"spa-{self.origin}", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """The page's URL: what the broker's ``allowed_return_to`` must list."""
        return self.origin + "/"

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        static = resources.files("service.demo").joinpath("static")
        files = {
            "/": static.joinpath("index.html"),
            "/static/app.js": static.joinpath("app.js"),
            "/static/style.css": static.joinpath("style.css"),
            "/pages/style.css": resources.files("service").joinpath("page.css"),
        }
        found = files.get(request.path)
        if found is None:
            response = Response("not found", status=404, mimetype="text/plain")
        else:
            name = found.name
            body = found.read_text()
            if name == "index.html":
                blank = '<meta name="broker-url" content="">'
                assert body.count(blank) == 1
                body = body.replace(blank, f'<meta name="broker-url" content="{self.broker_url}">')
            kind = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
            response = Response(body, mimetype=kind[name.rsplit(".", 1)[1]])
            response.headers["Content-Security-Policy"] = (
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                f"connect-src {self.broker_url}; frame-ancestors 'none'; base-uri 'none'"
            )
        return response(environ, start_response)

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)
        self._server.server_close()
