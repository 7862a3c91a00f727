"""The shared pools go through the proxy the environment names (``http_proxy`` and friends,
``no_proxy`` honoured), as requests and httpx do; a forward proxy on loopback relays the
calls and records what it was asked."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from fengchao_chains.llms import _http_clients
from fengchao_chains.llms.openai_compatible import ChatOpenAICompatible
from fengchao_chains.testing.fakes.openai import FakeOpenAI
from tests.loopback import LoopbackServer
from tests.vendors.harness import OPENAI

openai_fake, url, model = OPENAI.fixtures(fake="openai_fake")

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class RecordingProxy(LoopbackServer):
    """A forward HTTP proxy: each connection is relayed to the host named in its first
    request line, whose first bytes (request line and headers) are kept in ``seen``."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        super().__init__(self._start_relay)

    def _start_relay(self, client: socket.socket) -> None:
        threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        first = client.recv(65536)
        self.seen.append(first.decode(errors="replace"))
        target = urlsplit(first.split(b" ", 2)[1].decode())
        upstream = socket.create_connection((target.hostname or "", target.port or 80))
        upstream.sendall(first)
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingProxy]:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    served = RecordingProxy()
    _http_clients.env_proxy.cache_clear()
    yield served
    served.close()
    _http_clients.env_proxy.cache_clear()


def _through(proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _http_clients.env_proxy.cache_clear()


async def test_sync_and_async_calls_go_through_the_environments_proxy(
    model: ChatOpenAICompatible,
    openai_fake: FakeOpenAI,
    proxy: RecordingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _through(proxy, monkeypatch, http_proxy=proxy.url)
    assert model.invoke("hi").content == "Echo: hi"
    assert "".join(str(c.content) for c in model.stream("hi")) == "Echo: hi"
    assert (await model.ainvoke("hi")).content == "Echo: hi"
    assert "".join([str(c.content) async for c in model.astream("hi")]) == "Echo: hi"
    assert len(openai_fake.requests) == 4
    assert len(proxy.seen) == 2, "each side's pooled connection goes through the proxy"
    target = f"POST {model.base_url}/chat/completions HTTP/1.1"
    assert all(head.startswith(target) for head in proxy.seen)  # absolute form: a proxy call


async def test_no_proxy_names_hosts_reached_directly(
    model: ChatOpenAICompatible,
    openai_fake: FakeOpenAI,
    proxy: RecordingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _through(proxy, monkeypatch, HTTP_PROXY=proxy.url, NO_PROXY="localhost,127.0.0.1")
    assert model.invoke("hi").content == "Echo: hi"
    assert (await model.ainvoke("hi")).content == "Echo: hi"
    assert proxy.seen == []


async def test_a_login_in_the_proxy_url_is_sent_to_the_proxy(
    model: ChatOpenAICompatible,
    openai_fake: FakeOpenAI,
    proxy: RecordingProxy,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    login = proxy.url.replace("http://", "http://ann:s%40cret@")
    _through(proxy, monkeypatch, all_proxy=login)
    assert model.invoke("hi").content == "Echo: hi"
    assert (await model.ainvoke("hi")).content == "Echo: hi"
    expected = "Proxy-Authorization: Basic " + base64.b64encode(b"ann:s@cret").decode()
    assert len(proxy.seen) == 2  # one connection per side
    assert all(expected.lower() in head.lower() for head in proxy.seen)


def test_a_socks_proxy_is_ignored_with_a_warning(
    proxy: RecordingProxy, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _through(proxy, monkeypatch, all_proxy="socks5://127.0.0.1:1080")
    assert _http_clients.env_proxy("https", "api.openai.com") is None
    assert "only HTTP proxies" in caplog.text
