"""The service against cross-site pages and DNS rebinding, what unauthenticated answers reveal, identity names,
the docs page offline, HEAD on health, and refusals at start (a public address without keys, a bad TLS key)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import httpx
import pytest

from pdsn.runtime.gallery.names import checked_identity
from pdsn.serve.app import create_app
from pdsn.serve.config import ServeConfig
from pdsn.serve.origins import allowed_hosts

LOCAL = "http://127.0.0.1:8000"


def _call(config: ServeConfig, method: str, path: str, headers: dict | None = None, **kwargs) -> httpx.Response:
    """One request to the app in process (not loaded: routes past the checks answer 503 or their own)."""
    app = create_app(config)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL) as client:
            return await client.request(method, path, headers=headers, **kwargs)

    return asyncio.run(call())


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "192.168.1.10:8000", "127.0.0.1.nip.io"])
@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/identities"), ("POST", "/v1/identities")])
def test_a_host_the_server_does_not_answer_to_is_400(tiny_bundle, host, method, path):
    """DNS rebinding: a page's own name resolving to 127.0.0.1 reaches the port but names its own host."""
    answer = _call(ServeConfig(bundle=tiny_bundle), method, path, {"Host": host})
    assert answer.status_code == 400 and answer.json()["field"] == "Host"
    assert f"Host {host!r} is not a name this server answers to" in answer.json()["error"]


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST"])
def test_loopback_names_are_answered(tiny_bundle, host):
    assert _call(ServeConfig(bundle=tiny_bundle), "GET", "/v2/health/live", {"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://127.0.0.1:9999"},  # another local app's page
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "cross-site"},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/identities"), ("DELETE", "/v1/identities/alice"), ("POST", "/v1/identify"), ("POST", "/v1/embed")],
)
def test_cross_site_requests_may_not_change_state(tiny_bundle, headers, method, path):
    """A form POST needs no CORS preflight: the server itself refuses what a browser says is cross-site."""
    answer = _call(ServeConfig(bundle=tiny_bundle), method, path, headers, files={"images": ("a.png", b"x")})
    assert answer.status_code == 403 and answer.json()["field"] == "Origin"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Origin": LOCAL}, {"Sec-Fetch-Site": "same-origin"}, {"Origin": "https://app.example", "X-Any": "1"}],
)
def test_same_origin_allowed_origins_and_non_browser_clients_pass(tiny_bundle, headers):
    config = ServeConfig(bundle=tiny_bundle, allowed_origins=("https://app.example",))
    answer = _call(config, "POST", "/v1/embed", headers, json={"images": []})
    assert answer.status_code == 503  # past the checks; this app is not loaded


def test_reading_is_allowed_cross_site(tiny_bundle):
    config = ServeConfig(bundle=tiny_bundle)
    assert _call(config, "GET", "/v2/health/live", {"Origin": "http://evil.example"}).status_code == 200


def test_allowed_hosts_follow_the_listening_address_and_the_flag():
    assert allowed_hosts("127.0.0.1") == ("localhost", "127.0.0.1", "::1")
    assert allowed_hosts("10.0.0.5") == ("localhost", "127.0.0.1", "::1", "10.0.0.5")
    assert allowed_hosts("0.0.0.0") == ("*",)  # every address: any Host (keys are required there)
    assert allowed_hosts("0.0.0.0", ["faces.example", "[::1]"]) == ("localhost", "127.0.0.1", "::1", "faces.example")
    assert allowed_hosts("127.0.0.1", ["*"]) == ("*",)


def test_unauthenticated_answers_name_no_path(tmp_path):
    secret = tmp_path / "secret-folder" / "bundle"
    config = ServeConfig(bundle=secret, gallery=tmp_path / "secret-gallery.db")
    app = create_app(config)

    async def call() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=LOCAL) as client:
            return [await client.get("/v2/health/ready"), await client.post("/v1/embed", json={"images": []})]

    for answer in asyncio.run(call()):
        assert answer.status_code in (400, 503) and "loading" in answer.text
        assert "secret" not in answer.text and str(tmp_path) not in answer.text


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("ali\u200bce", "a format character U+200B (ZERO WIDTH SPACE) at position 3"),
        ("\u202eecila", "a format character U+202E (RIGHT-TO-LEFT OVERRIDE) at position 0"),
        ("alice\x7f", "a control character U+007F"),
        ("alice\x85", "a control character U+0085"),
        ("a\u2028b", "a line separator U+2028"),
        ("a\u2029b", "a paragraph separator U+2029"),
        ("tab\there", "a control character U+0009"),
        ("Zoe\u0308", "not in Unicode NFC form"),
    ],
)
def test_identity_names_that_display_as_something_else_are_refused(name, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        checked_identity(name)


@pytest.mark.parametrize("name", ["alice", "Zoë", "李小龙", "O'Brien-Smith", "józef 2"])
def test_names_people_have_are_accepted(name):
    assert checked_identity(name) == name


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/v2/models/pdsn/ready"])
def test_head_on_health_routes(tiny_bundle, path):
    answer = _call(ServeConfig(bundle=tiny_bundle), "HEAD", path)
    assert answer.status_code in (200, 400) and answer.content == b""


def test_the_docs_page_loads_its_assets_from_the_server(tiny_bundle):
    config = ServeConfig(bundle=tiny_bundle)
    page = _call(config, "GET", "/docs")
    assert page.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in page.text
    assert re.findall(r'(?:src|href)="(https?://[^"]*)"', page.text) == []  # nothing loaded from elsewhere
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        answer = _call(config, "GET", f"/docs/assets/{asset}")
        assert answer.status_code == 200 and len(answer.content) > 100_000


def _serve(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pdsn", "serve", *argv], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_public_address_without_keys_refuses_to_start(tiny_bundle):
    ran = _serve("--bundle", str(tiny_bundle), "--host", "0.0.0.0", "--port", "1")
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    assert "--host 0.0.0.0 listens beyond this machine" in ran.stderr and "--insecure-no-auth" in ran.stderr


def test_a_bad_tls_key_is_a_message_not_a_traceback(tiny_bundle, tmp_path):
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    key.write_text("not a key\n")
    ran = _serve("--bundle", str(tiny_bundle), "--ssl-certfile", str(certificate), "--ssl-keyfile", str(key))
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    assert "do not load as a PEM certificate and its private key" in ran.stderr
    missing = _serve("--bundle", str(tiny_bundle), "--ssl-certfile", str(certificate), "--ssl-keyfile", "nope.pem")
    assert missing.returncode == 2 and "--ssl-keyfile: no such file 'nope.pem'" in missing.stderr
