"""Image URLs: off by default; when on, https only, allow-listed hosts, public addresses only (checked on every
redirect), one deadline, a streaming size cap. Exercised against a local HTTPS server with its own CA."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json

import httpx
import numpy as np
import pytest

from service.errors import PayloadTooLarge, UrlFetchFailed, UrlRefused
from service.urls import MAX_REDIRECTS, ByteBudget, UrlFetcher, address_problem, host_allowed
from tests.service.conftest import encode, shape_image
from tests.service.https_server import ImageHost, chunked_body, slow_body
from tests.service.server import ServerProcess

PNG = encode(shape_image("red", "circle"))
MAX_BYTES = 100_000


def echo_headers(handler) -> None:
    """A route whose body is the request's headers, as JSON."""
    body = json.dumps({k.lower(): v for k, v in handler.headers.items()}).encode()
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    routes = {
        "/red.png": (200, {"Content-Type": "image/png"}, PNG),
        "/hop": (302, {"Location": "/red.png"}, b""),
        "/to-private": (302, {"Location": "https://10.0.0.1/red.png"}, b""),
        "/to-metadata": (302, {"Location": "https://169.254.169.254/latest/meta-data/"}, b""),
        "/to-http": (302, {"Location": "http://localhost/red.png"}, b""),
        "/to-other-host": (302, {"Location": "https://evil.example/red.png"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
        "/no-location": (302, {}, b""),
        "/echo-headers": echo_headers,
        "/chain/0": (302, {"Location": "/red.png"}, b""),  # /chain/n: n + 1 redirects to the image
        **{f"/chain/{n}": (302, {"Location": f"/chain/{n - 1}"}, b"") for n in range(1, MAX_REDIRECTS + 1)},
        "/big": (200, {}, b"\0" * (MAX_BYTES + 1)),
        "/exact": (200, {}, b"\0" * MAX_BYTES),
        "/exact-chunked": chunked_body(MAX_BYTES),
        "/big-chunked": chunked_body(MAX_BYTES * 3),
        "/slow": slow_body(0.05),
        "/gone": (404, {}, b"no"),
    }
    h = ImageHost(tmp_path_factory.mktemp("tls"), routes)
    yield h
    h.close()


def fetcher(host, **kw) -> UrlFetcher:
    opts = dict(timeout_s=1.0, max_bytes=MAX_BYTES, ca_bundle=str(host.ca), allow_loopback_for_tests=True)
    return UrlFetcher(["localhost", "10.0.0.1", "169.254.169.254"], **{**opts, **kw})


def fetch(f: UrlFetcher, url: str) -> bytes:
    return asyncio.run(f.fetch(url))


@pytest.mark.parametrize("address", ["10.0.0.1", "172.16.5.4", "192.168.1.1", "127.0.0.1", "::1", "0.0.0.0",
                                     "169.254.169.254", "fd00:ec2::254", "fe80::1", "224.0.0.1", "100.64.0.1",
                                     "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1", "fc00::1", "240.0.0.1"])
def test_non_public_addresses_are_refused(address):
    assert address_problem(ipaddress.ip_address(address)), address


def test_public_addresses_pass_and_the_test_switch_opens_loopback_only():
    for address in ("93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"):
        assert address_problem(ipaddress.ip_address(address)) is None
    for address in ("127.0.0.1", "::1"):
        assert address_problem(ipaddress.ip_address(address), allow_loopback=True) is None
    for address in ("10.0.0.1", "169.254.169.254", "fd00:ec2::254", "192.168.0.1"):
        assert address_problem(ipaddress.ip_address(address), allow_loopback=True), address


@pytest.mark.parametrize("address,problem", [
    ("169.254.169.254", "a cloud metadata address"), ("fd00:ec2::254", "a cloud metadata address"),
    ("127.0.0.1", "a loopback address"), ("::1", "a loopback address"), ("fe80::1", "a link-local address"),
    ("224.0.0.1", "a multicast address"), ("0.0.0.0", "an unspecified address"), ("240.0.0.1", "a reserved address"),
    ("10.1.2.3", "a private address"), ("100.64.0.1", "a non-public address"),
    # IPv6 carrying an IPv4 address: mapped, 6to4 and Teredo (whose client address is stored inverted)
    ("::ffff:10.0.0.1", "an IPv6 address wrapping 10.0.0.1 (a private address)"),
    ("2002:0a00:0001::1", "an IPv6 address wrapping 10.0.0.1 (a private address)"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "an IPv6 address wrapping 10.0.0.1 (a private address)"),
    ("::ffff:8.8.8.8", None), ("2002:0808:0808::1", None),  # wrapping a public address: public
])
def test_each_address_class_is_named(address, problem):
    assert address_problem(ipaddress.ip_address(address)) == problem


def test_no_allow_list_is_a_configuration_error():
    with pytest.raises(ValueError) as err:
        UrlFetcher([])
    assert str(err.value) == "URL fetching needs an allow-list of hosts (CLIP_URL_ALLOWED_HOSTS)"


def test_the_loopback_test_switch_reaches_ip_literals():
    url = "https://127.0.0.1:8443/x.png"
    assert str(UrlFetcher(["127.0.0.1"], allow_loopback_for_tests=True).check_url(url)) == url
    with pytest.raises(UrlRefused, match="loopback"):
        UrlFetcher(["127.0.0.1"]).check_url(url)


def test_the_loopback_test_switch_reaches_wrapped_addresses_too():
    assert address_problem(ipaddress.ip_address("::ffff:127.0.0.1"), allow_loopback=True) is None
    assert address_problem(ipaddress.ip_address("::ffff:10.0.0.1"), allow_loopback=True) is not None


def test_host_allow_list():
    assert host_allowed("img.example.com", ["img.example.com"])
    assert host_allowed("IMG.example.com.", ["img.example.com"])
    assert host_allowed("img.example.com", [" IMG.example.com. "])  # entries are read as loosely as hosts
    assert host_allowed("a.example.com", ["*.example.com."]) and not host_allowed("img.example.com", [".example.com"])
    assert host_allowed("a.b.example.com", ["*.example.com"]) and not host_allowed("example.com", ["*.example.com"])
    assert not host_allowed("evilexample.com", ["*.example.com"]) and not host_allowed("x.com", ["img.example.com"])
    assert host_allowed("anything.org", ["*"])
    # '*.example.com' needs a name before the dot: one letter is enough, the bare dot is not
    assert host_allowed("a.example.com", ["*.example.com"]) and not host_allowed(".example.com", ["*.example.com"])


@pytest.mark.parametrize("url,message", [
    ("https://[::1/x", "not a valid URL: Invalid port: ':1'"),
    ("HTTP://img.example.com/x", "only https URLs are fetched, not http:"),
    ("//img.example.com/x", "only https URLs are fetched, not scheme-less:"),
    ("https://u:p@img.example.com/x", "URLs with credentials (user:password@) are not fetched"),
    ("https:///x", "URL has no host"),
    ("https://evil.example/x", "host 'evil.example' is not in CLIP_URL_ALLOWED_HOSTS"),
    ("https://[::1]/x", "::1 is a loopback address; only public addresses are fetched"),
    ("https://10.0.0.1/x", "10.0.0.1 is a private address; only public addresses are fetched"),
])
def test_each_refusal_says_what_is_wrong(url, message):
    with pytest.raises(UrlRefused) as refused:
        UrlFetcher(["img.example.com", "::1", "10.0.0.1"]).check_url(url)
    assert refused.value.message == message


@pytest.mark.parametrize("url,words", [
    ("http://localhost/red.png", "only https"),
    ("file:///etc/passwd", "only https"),
    ("ftp://localhost/x", "only https"),
    ("https://user:pw@localhost/red.png", "credentials"),
    ("https://evil.example/red.png", "not in CLIP_URL_ALLOWED_HOSTS"),
    ("https://10.0.0.1/red.png", "private"),
    ("https://169.254.169.254/latest/meta-data/", "metadata"),
])
def test_urls_refused_before_any_connection(host, url, words):
    with pytest.raises(UrlRefused, match=words):
        fetch(fetcher(host), url)


def test_allowed_host_is_fetched_also_through_a_redirect(host):
    assert fetch(fetcher(host), host.url("/red.png")) == PNG
    assert fetch(fetcher(host), host.url("/hop")) == PNG


def test_the_image_host_is_asked_for_an_image_by_clip_serve(host):
    sent = json.loads(fetch(fetcher(host), host.url("/echo-headers")))
    assert (sent["host"], sent["accept"], sent["user-agent"]) == (f"localhost:{host.port}", "image/*", "clip-serve")


def test_redirects_are_followed_up_to_the_limit(host):
    assert fetch(fetcher(host), host.url(f"/chain/{MAX_REDIRECTS - 1}")) == PNG  # MAX_REDIRECTS hops
    with pytest.raises(UrlFetchFailed) as failed:
        fetch(fetcher(host), host.url(f"/chain/{MAX_REDIRECTS}"))
    assert failed.value.message == f"more than {MAX_REDIRECTS} redirects"


def test_loopback_is_refused_without_the_test_switch(host):
    with pytest.raises(UrlRefused, match="does not resolve to a public address") as refused:
        fetch(fetcher(host, allow_loopback_for_tests=False), host.url("/red.png"))
    assert "127.0.0.1" not in str(refused.value) and "::1" not in str(refused.value)  # the DNS answer stays ours


@pytest.mark.parametrize("path,error,words", [
    ("/to-private", UrlRefused, "private"),
    ("/to-metadata", UrlRefused, "metadata"),
    ("/to-http", UrlRefused, "only https"),
    ("/to-other-host", UrlRefused, "not in CLIP_URL_ALLOWED_HOSTS"),
    ("/loop", UrlFetchFailed, "redirects"),
    ("/no-location", UrlFetchFailed, "HTTP 302 redirect without a Location"),
    ("/big", PayloadTooLarge, "CLIP_URL_MAX_BYTES"),
    ("/big-chunked", PayloadTooLarge, "CLIP_URL_MAX_BYTES"),
    ("/slow", UrlFetchFailed, "CLIP_URL_TIMEOUT_S"),
    ("/gone", UrlFetchFailed, "404"),
])
def test_every_hop_and_body_is_checked(host, path, error, words):
    with pytest.raises(error, match=words):
        fetch(fetcher(host), host.url(path))


def test_an_image_of_exactly_the_cap_is_fetched_and_one_byte_more_is_not(host):
    assert fetch(fetcher(host), host.url("/exact")) == b"\0" * MAX_BYTES
    assert fetch(fetcher(host), host.url("/exact-chunked")) == b"\0" * MAX_BYTES
    with pytest.raises(PayloadTooLarge) as declared:  # refused from its Content-Length, before the body
        fetch(fetcher(host), host.url("/big"))
    assert declared.value.message == "the image is 100,001 bytes; the limit is 100,000 (CLIP_URL_MAX_BYTES)"
    with pytest.raises(PayloadTooLarge) as streamed:  # no Content-Length: counted as it streams
        fetch(fetcher(host), host.url("/big-chunked"))
    assert streamed.value.message == "the image is over 100,000 bytes (CLIP_URL_MAX_BYTES)"


def test_a_requests_budget_can_be_spent_to_the_last_byte():
    budget = ByteBudget(10)
    assert budget.take(4) and budget.take(6) and not budget.take(1)


def test_the_network_never_opens_unix_sockets():
    network = UrlFetcher(["img.example.com"]).network
    with pytest.raises(UrlRefused) as err:
        asyncio.run(network.connect_unix_socket("/run/docker.sock"))
    assert err.value.message == "unix sockets are never fetched"
    asyncio.run(network.sleep(0.001))  # httpcore's pauses go to the real backend


def test_an_untrusted_certificate_is_refused(host):
    with pytest.raises(UrlFetchFailed, match="could not fetch"):
        fetch(fetcher(host, ca_bundle=None), host.url("/red.png"))


# --- through the real server ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def url_server(bundled_dir, host, tmp_path_factory):
    proc = ServerProcess({"CLIP_MODEL": str(bundled_dir), "CLIP_ALLOW_URLS": "true",
                          "CLIP_URL_ALLOWED_HOSTS": "localhost,10.0.0.1", "CLIP_URL_CA_BUNDLE": str(host.ca),
                          "CLIP_URL_ALLOW_LOOPBACK_FOR_TESTS": "true", "CLIP_URL_TIMEOUT_S": "1",
                          "CLIP_URL_MAX_BYTES": str(MAX_BYTES), "CLIP_IMAGE_MAX_BATCH": "8"},
                         tmp_path_factory.mktemp("urls") / "server.log").wait_ready()
    yield proc
    proc.stop()


def test_server_embeds_and_classifies_an_image_url(url_server, host):
    by_url = httpx.post(url_server.url + "/embed/image", json={"images": [host.url("/red.png"), host.url("/hop")]})
    assert by_url.status_code == 200, by_url.text
    by_bytes = httpx.post(url_server.url + "/embed/image", json={"images": [base64.b64encode(PNG).decode()]})
    a, b = np.array(by_url.json()["embeddings"]), np.array(by_bytes.json()["embeddings"])
    assert np.allclose(a[0], b[0], atol=1e-5) and np.allclose(a[1], b[0], atol=1e-5)
    r = httpx.post(url_server.url + "/classify", json={"image": host.url("/red.png"),
                                                      "labels": ["red circle", "blue square"]})
    assert r.status_code == 200 and r.json()["results"][0][0]["label"] == "red circle", r.text


@pytest.mark.parametrize("url,status,etype", [
    ("/to-private", 400, "url_refused"),
    ("/big", 413, "payload_too_large"),
    ("/slow", 400, "url_fetch_failed"),
    ("http://localhost/red.png", 400, "url_refused"),
    ("file:///etc/passwd", 400, "url_refused"),
    ("/etc/passwd", 400, "invalid_input"),
])
def test_server_refuses_bad_urls_with_the_right_status(url_server, host, url, status, etype):
    target = host.url(url) if url.startswith("/") and url != "/etc/passwd" else url
    r = httpx.post(url_server.url + "/embed/image", json={"images": [base64.b64encode(PNG).decode(), target]})
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == etype and r.json()["error"]["message"].startswith("images[1]: ")


def test_urls_are_off_by_default(server, host):
    r = httpx.post(server.url + "/embed/image", json={"images": [host.url("/red.png")]})
    assert r.status_code == 400 and "CLIP_ALLOW_URLS" in r.json()["error"]["message"]
