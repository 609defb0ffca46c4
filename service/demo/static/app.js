// The demo page of the Chime Identity Broker, and a reference for SPA authors.
//
// It uses only the broker's public API, always with fetch(..., {credentials: "include"}) so
// the browser sends the broker's HttpOnly session cookie (the page never sees it):
//   GET  /v1/providers             the login buttons
//   GET  /v1/login/{provider}      a full-page navigation, with ?return_to=<this page>
//   GET  /v1/session               who is signed in (401 when nobody is)
//   POST /v1/credentials           AWS credentials for the signed-in user, again by itself
//                                  before they expire (as the AWS SDKs do)
//   POST /v1/logout                ends the broker session
// A failed login comes back to this page as ?error=<code>.
//
// The broker's base URL is the content of <meta name="broker-url">; empty means the origin
// that served this page. A page on another origin must be listed in the broker's
// service.allowed_origins and service.allowed_return_to, and be same-site with the broker
// (the session cookie is SameSite=Lax).
"use strict";

(() => {
  const ERROR_TEXT = {
    access_denied: "The identity provider or the broker's sign-in rules refused the sign-in.",
    invalid_request: "The sign-in request was malformed or had expired. Please try again.",
    invalid_token: "The identity provider's answer could not be verified.",
    unmappable_identity: "This account cannot become an Amazon Chime SDK user id.",
    unauthenticated: "Your session has ended. Please sign in again.",
    reauthentication_required: "Please sign in again to get new credentials.",
    origin_not_allowed: "The broker does not accept requests from this page's origin.",
    unknown_provider: "The broker does not know that identity provider.",
    rate_limited: "Too many attempts. Please wait a moment and try again.",
    upstream_error: "The identity provider or AWS answered with an error.",
    upstream_unavailable: "The identity provider or AWS cannot be reached right now.",
    upstream_timeout: "The identity provider or AWS took too long to answer.",
    network_error: "The broker cannot be reached.",
  };
  const CODE_PATTERN = /^[a-z0-9_]{1,64}$/;

  const $ = (id) => document.getElementById(id);

  function brokerBase() {
    const meta = document.querySelector('meta[name="broker-url"]');
    let base = (meta && meta.content.trim()) || window.location.origin;
    if (!base.endsWith("/")) {
      base += "/";
    }
    return new URL(base);
  }

  const broker = brokerBase();

  class BrokerError extends Error {
    constructor(status, problem) {
      super(problem.detail || problem.title || `HTTP ${status}`);
      this.status = status;
      this.code = typeof problem.code === "string" ? problem.code : "internal_error";
    }
  }

  async function call(method, path) {
    let response;
    try {
      response = await fetch(new URL(path, broker), {
        method,
        credentials: "include",
        cache: "no-store",
        headers: { Accept: "application/json" },
      });
    } catch (_unreachable) {
      throw new BrokerError(0, { code: "network_error", detail: `no answer from ${broker.origin}` });
    }
    let body = null;
    try {
      body = await response.json();
    } catch (_notJson) {
      body = null;
    }
    if (!response.ok) {
      throw new BrokerError(response.status, body || {});
    }
    return body;
  }

  // -- messages ----------------------------------------------------------------------------

  function showError(code, detail) {
    const known = CODE_PATTERN.test(code) ? code : "internal_error";
    $("error-title").textContent = known === "unauthenticated" ? "Signed out" : "Something went wrong";
    $("error-message").textContent = ERROR_TEXT[known] || detail || "The request did not complete.";
    $("error-code").textContent = known;
    $("error").hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  // A failed browser login returns as ?error=<code>: show it once, then drop it from the URL
  // so a reload does not show it again.
  function takeErrorFromUrl() {
    const url = new URL(window.location.href);
    const code = url.searchParams.get("error");
    if (code === null) {
      return;
    }
    showError(code, null);
    $("error-title").textContent = "Sign-in failed";
    url.searchParams.delete("error");
    url.searchParams.delete("error_description");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }

  // -- signed out --------------------------------------------------------------------------

  let providersShown = false;
  let providerList = null;

  // The providers, fetched once: the buttons, and the names shown for a signed-in user.
  async function providers() {
    if (providerList === null) {
      providerList = await call("GET", "v1/providers");
    }
    return providerList;
  }

  function providerLabel(name) {
    const found = (providerList || []).find((p) => p.name === name);
    return found ? found.display_name : name;
  }

  function returnTo() {
    return window.location.origin + window.location.pathname;
  }

  function startLogin(provider) {
    const login = new URL(provider.login_url);
    login.searchParams.set("return_to", returnTo());
    window.location.assign(login.toString());
  }

  async function showProviders() {
    if (providersShown) {
      return;
    }
    const known = await providers();
    const list = $("providers");
    list.replaceChildren();
    for (const provider of known) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "provider";
      button.dataset.provider = provider.name;
      button.textContent = provider.display_name;
      button.addEventListener("click", () => startLogin(provider));
      const item = document.createElement("li");
      item.append(button);
      list.append(item);
    }
    $("no-providers").hidden = known.length > 0;
    providersShown = true;
  }

  async function renderSignedOut(endSessionUrl) {
    stopCountdown();
    stopRenewal();
    $("signed-in").hidden = true;
    $("signed-out").hidden = false;
    $("signed-out-notice").hidden = endSessionUrl === undefined;
    const idpLogout = $("idp-logout");
    idpLogout.hidden = true;
    if (typeof endSessionUrl === "string" && /^https?:\/\//.test(endSessionUrl)) {
      idpLogout.href = endSessionUrl;
      idpLogout.hidden = false;
    }
    await showProviders();
  }

  // -- signed in ---------------------------------------------------------------------------

  let current = null;
  let countdown = null;

  function twoDigits(n) {
    return String(n).padStart(2, "0");
  }

  function remainingText(ms) {
    if (ms <= 0) {
      return "expired";
    }
    const total = Math.floor(ms / 1000);
    const hours = Math.floor(total / 3600);
    const minutes = Math.floor((total % 3600) / 60);
    const seconds = total % 60;
    const clock = hours > 0
      ? `${hours}:${twoDigits(minutes)}:${twoDigits(seconds)}`
      : `${minutes}:${twoDigits(seconds)}`;
    return `in ${clock}`;
  }

  function tick() {
    const ms = Date.parse(current.credentials.expiration) - Date.now();
    const node = $("expires-in");
    node.textContent = remainingText(ms);
    node.classList.toggle("expired", ms <= 0);
    $("expired").hidden = ms > 0;
  }

  function stopCountdown() {
    if (countdown !== null) {
      window.clearInterval(countdown);
      countdown = null;
    }
  }

  function renderSignedIn(body) {
    current = body;
    $("display-name").textContent = body.display_name;
    $("user-id").textContent = body.user_id;
    $("provider").textContent = providerLabel(body.provider);
    $("user-arn").textContent = body.app_instance_user_arn;
    $("region").textContent = body.region;
    $("access-key-id").textContent = body.credentials.access_key_id;
    const expiration = $("expiration");
    expiration.dateTime = body.credentials.expiration;
    expiration.textContent = new Date(body.credentials.expiration).toLocaleTimeString();
    stopCountdown();
    tick();
    countdown = window.setInterval(tick, 1000);
    scheduleRenewal(body.credentials.expiration);
    $("signed-out").hidden = true;
    $("signed-in").hidden = false;
  }

  async function vend() {
    const body = await call("POST", "v1/credentials");
    await providers().catch(() => null);
    renderSignedIn(body);
  }

  // -- renewal: new credentials before these expire, as an SDK would -----------------------

  const RENEW_BEFORE_MS = 10 * 60 * 1000; // the AWS SDKs refresh 10-15 minutes ahead
  const MIN_RENEW_DELAY_MS = 30 * 1000;
  let renewal = null;

  // When to ask again: ten minutes before expiry, or at half-life for credentials that
  // last less than twenty minutes; never in a tight loop.
  function renewalDelay(expiration) {
    const left = Date.parse(expiration) - Date.now();
    const delay = left > 2 * RENEW_BEFORE_MS ? left - RENEW_BEFORE_MS : left / 2;
    return Math.max(delay, MIN_RENEW_DELAY_MS);
  }

  function stopRenewal() {
    if (renewal !== null) {
      window.clearTimeout(renewal);
      renewal = null;
    }
  }

  function scheduleRenewal(expiration) {
    stopRenewal();
    renewal = window.setTimeout(renewInBackground, renewalDelay(expiration));
  }

  async function renewInBackground() {
    renewal = null;
    if (current === null) {
      return;
    }
    try {
      await vend();
      clearError();
      setStatus(`Renewed automatically at ${new Date().toLocaleTimeString()}.`);
    } catch (error) {
      // Unreachable or refused: the countdown runs out and the expired state offers a
      // button; a 401 means the session ended.
      await failed(error).catch(() => null);
    }
  }

  // -- actions -----------------------------------------------------------------------------

  async function refresh() {
    const button = $("refresh");
    const before = current;
    button.disabled = true;
    setStatus("Refreshing…");
    try {
      await vend();
      clearError();
      const reused = before !== null
        && before.credentials.access_key_id === current.credentials.access_key_id
        && before.credentials.expiration === current.credentials.expiration;
      const when = new Date().toLocaleTimeString();
      setStatus(reused
        ? `Refreshed at ${when}: the same credentials, still valid.`
        : `Refreshed at ${when}: new credentials.`);
    } catch (error) {
      setStatus("");
      await failed(error);
    } finally {
      button.disabled = false;
    }
  }

  async function logout() {
    clearError();
    setStatus("");
    let endSessionUrl = null;
    try {
      const body = await call("POST", "v1/logout");
      endSessionUrl = body.end_session_url;
    } catch (error) {
      if (error.status !== 401) {
        showError(error.code, error.message);
        return;
      }
    }
    current = null;
    await renderSignedOut(endSessionUrl);
  }

  async function failed(error) {
    showError(error.code, error.message);
    if (error.status === 401) {
      current = null;
      await renderSignedOut();
    }
  }

  async function start() {
    $("broker-origin").textContent = broker.origin;
    $("openapi-link").href = new URL("openapi.json", broker).toString();
    $("refresh").addEventListener("click", refresh);
    $("renew").addEventListener("click", refresh);
    $("logout").addEventListener("click", logout);
    takeErrorFromUrl();
    try {
      await call("GET", "v1/session");
    } catch (error) {
      $("loading").hidden = true;
      if (error.status === 401) {
        await renderSignedOut().catch((e) => showError(e.code, e.message));
      } else {
        showError(error.code, error.message);
      }
      return;
    }
    try {
      await vend();
    } catch (error) {
      await failed(error).catch((e) => showError(e.code, e.message));
    } finally {
      $("loading").hidden = true;
    }
  }

  document.addEventListener("DOMContentLoaded", start);
})();
