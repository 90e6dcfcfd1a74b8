"""Upstream calls through an HTTP proxy: a CONNECT proxy on 127.0.0.1 in front of the mock
upstream served over TLS (a throwaway CA from trustme), taken from HTTPS_PROXY / HTTP_PROXY /
NO_PROXY or given per request, with credentials, refusals and a proxy that is down."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import orjson
import pytest
import trustme
import uvloop

from quotagate.config import parse_config
from quotagate.errors import UpstreamError, UpstreamTimeoutError
from quotagate.mock import MockOptions, MockUpstream
from quotagate.upstream import HttpTransport, UpstreamRequest

from ..conftest import RunningGateway, ServerThread, closed_port

CHAT = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}'


class TlsServerThread(ServerThread):
    """The mock upstream served over TLS by uvicorn, with a certificate for 127.0.0.1 and localhost."""

    def __init__(self, app: Any, pem: Path) -> None:
        super().__init__(app)
        self.server.config.ssl_certfile = self.server.config.ssl_keyfile = str(pem)
        self.url = f"https://127.0.0.1:{self.port}"


class ConnectProxy:
    """An HTTP proxy on 127.0.0.1 in a thread: CONNECT tunnels and absolute-form requests, piped
    both ways. ``credentials`` ("user:password") makes it answer 407 to anything without them;
    ``refuse`` answers CONNECT with that status line instead; ``tls`` serves the proxy over TLS."""

    def __init__(
        self, credentials: str | None = None, refuse: str | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self.credentials = credentials
        self.refuse = refuse
        self.connections = 0
        self.tunnels: list[str] = []  # the authority of each CONNECT that was let through
        self.heads: list[tuple[str, dict[str, str]]] = []  # each connection's first request line and head
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                client = tls.wrap_socket(self.request, server_side=True) if tls else self.request
                proxy.serve(client)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def serve(self, client: socket.socket) -> None:
        self.connections += 1
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(65536)
            if not data:
                return
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, v in (x.split(": ", 1) for x in lines)}
        self.heads.append((line, headers))
        method, target, _ = line.split(" ", 2)
        expected = None if self.credentials is None else "Basic " + base64.b64encode(self.credentials.encode()).decode()
        if expected is not None and headers.get("proxy-authorization") != expected:
            client.sendall(
                b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="test"\r\n'
                b"Content-Length: 6\r\n\r\ndenied"
            )
            client.close()
            return
        if method == "CONNECT":
            if self.refuse is not None:
                client.sendall(f"HTTP/1.1 {self.refuse}\r\nContent-Length: 0\r\n\r\n".encode())
                client.close()
                return
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            self.tunnels.append(target)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            # Absolute form: the request goes on as it came (uvicorn takes an absolute URL too),
            # and so does everything after it on this connection.
            parts = urlsplit(target)
            upstream = socket.create_connection((parts.hostname, parts.port or 80))
            upstream.sendall(head + b"\r\n\r\n" + rest)
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        # Either side ending ends both: the other thread's recv returns.
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def trusting(authority: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts the test CA (and nothing else)."""
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


@pytest.fixture(scope="module")
def server_tls(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def tls_upstream(authority: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    pem = tmp_path_factory.mktemp("tls") / "server.pem"
    authority.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    server = TlsServerThread(MockUpstream(MockOptions()), pem).start()
    yield server
    server.stop()


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Set the proxy variables a test names, with every other spelling of them removed."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)

    def set_env(**variables: str) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return set_env


@pytest.fixture
def start_proxy() -> Iterator[Callable[..., ConnectProxy]]:
    started: list[ConnectProxy] = []

    def start(**options: Any) -> ConnectProxy:
        started.append(ConnectProxy(**options))
        return started[-1]

    yield start
    for proxy in started:
        proxy.close()


def chat_to(url: str, proxy: str | None = None) -> UpstreamRequest:
    return UpstreamRequest(
        url + "/v1/chat/completions",
        {"Content-Type": "application/json", "Authorization": "Bearer sk-test"},
        CHAT,
        connect_timeout=5.0,
        first_byte_timeout=5.0,
        chunk_timeout=5.0,
        label="openai/gpt-4o-mini#0",
        proxy=proxy,
    )


async def completion(transport: HttpTransport, request: UpstreamRequest) -> dict[str, Any]:
    response = await transport.send(request)
    body = await response.read()
    assert response.status == 200, body
    return dict(orjson.loads(body))


def gateway_through(
    start_gateway: Callable[..., RunningGateway], sqlite_url: str, trusting: ssl.SSLContext, *deployments: Any
) -> tuple[RunningGateway, openai.OpenAI]:
    config = parse_config(
        {
            "database": sqlite_url,
            "master_key": "env:TEST_MASTER_KEY",
            "tiers": {"free": {}},
            "models": [{"name": "gpt-4o-mini", "deployments": list(deployments)}],
        }
    )
    gateway = start_gateway(config, transport=HttpTransport(ssl_context=trusting))
    client = openai.OpenAI(base_url=gateway.v1, api_key=str(gateway.create_key()["key"]), max_retries=0)
    return gateway, client


def deployment(url: str, **extra: Any) -> dict[str, Any]:
    return {"provider": "openai-compatible", "base_url": url + "/v1", "model": "gpt-4o-mini", **extra}


def test_an_https_deployment_is_reached_through_the_https_proxy_of_the_environment(
    start_gateway: Callable[..., RunningGateway],
    sqlite_url: str,
    trusting: ssl.SSLContext,
    tls_upstream: ServerThread,
    start_proxy: Callable[..., ConnectProxy],
    proxy_env: Callable[..., None],
) -> None:
    """With HTTPS_PROXY set, the gateway answers through one CONNECT tunnel, kept for later requests."""
    proxy = start_proxy()
    proxy_env(HTTPS_PROXY=proxy.url)
    _, client = gateway_through(start_gateway, sqlite_url, trusting, deployment(tls_upstream.url))
    for _ in range(3):
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert proxy.tunnels == [f"127.0.0.1:{tls_upstream.port}"]
    line, headers = proxy.heads[0]
    assert line == f"CONNECT 127.0.0.1:{tls_upstream.port} HTTP/1.1"
    assert "proxy-authorization" not in headers


def test_a_proxy_that_is_down_fails_over_like_any_unreachable_deployment(
    start_gateway: Callable[..., RunningGateway],
    sqlite_url: str,
    trusting: ssl.SSLContext,
    tls_upstream: ServerThread,
    mock_upstream: ServerThread,
    proxy_env: Callable[..., None],
) -> None:
    """An unreachable HTTPS_PROXY is a connect failure: the next deployment (http://, no proxy) serves."""
    proxy_env(HTTPS_PROXY=f"http://127.0.0.1:{closed_port()}")
    _, client = gateway_through(
        start_gateway,
        sqlite_url,
        trusting,
        deployment(tls_upstream.url, priority=0),
        deployment(mock_upstream.url, priority=1, api_key="env:TEST_UPSTREAM_KEY"),
    )
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-quotagate-deployment"] == "gpt-4o-mini#1 (openai-compatible/gpt-4o-mini)"


def test_a_deployments_own_proxy_is_used_instead_of_the_environments(
    start_gateway: Callable[..., RunningGateway],
    sqlite_url: str,
    trusting: ssl.SSLContext,
    tls_upstream: ServerThread,
    start_proxy: Callable[..., ConnectProxy],
    proxy_env: Callable[..., None],
) -> None:
    """A deployment's ``proxy:`` (with its credentials in an environment variable, as secrets
    are) wins over HTTPS_PROXY and over NO_PROXY."""
    proxy = start_proxy(credentials="team:s3cret")
    own = proxy.url.replace("http://", "http://team:s3cret@")
    proxy_env(HTTPS_PROXY=f"http://127.0.0.1:{closed_port()}", NO_PROXY="127.0.0.1", TEAM_PROXY=own)
    _, client = gateway_through(
        start_gateway, sqlite_url, trusting, deployment(tls_upstream.url, proxy="env:TEAM_PROXY")
    )
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert proxy.tunnels == [f"127.0.0.1:{tls_upstream.port}"]


async def test_no_proxy_names_hosts_reached_directly(
    trusting: ssl.SSLContext,
    tls_upstream: ServerThread,
    start_proxy: Callable[..., ConnectProxy],
    proxy_env: Callable[..., None],
) -> None:
    """NO_PROXY (read when the transport is made) sends 127.0.0.1 and localhost past the proxy."""
    proxy = start_proxy()
    proxy_env(HTTPS_PROXY=proxy.url, NO_PROXY="example.com, .internal,localhost,127.0.0.1")
    transport = HttpTransport(ssl_context=trusting)
    proxy_env(NO_PROXY="")  # too late: the transport read the environment when it was made
    for host in ("127.0.0.1", "localhost"):
        await completion(transport, chat_to(tls_upstream.url.replace("127.0.0.1", host)))
    assert proxy.connections == 0
    await transport.aclose()

    ignoring = HttpTransport(ssl_context=trusting, trust_env=False)
    await completion(ignoring, chat_to(tls_upstream.url))
    assert proxy.connections == 0
    await ignoring.aclose()


async def test_a_request_with_its_own_proxy_tunnels_through_it_and_reuses_the_tunnel(
    trusting: ssl.SSLContext,
    tls_upstream: ServerThread,
    start_proxy: Callable[..., ConnectProxy],
    proxy_env: Callable[..., None],
) -> None:
    """A request's proxy (a deployment's ``proxy:``) wins over NO_PROXY; tunnels are pooled per proxy."""
    first, second = start_proxy(), start_proxy()
    proxy_env(NO_PROXY="*")
    transport = HttpTransport(ssl_context=trusting)
    for _ in range(3):
        await completion(transport, chat_to(tls_upstream.url, proxy=first.url))
    await completion(transport, chat_to(tls_upstream.url, proxy=second.url))
    await completion(transport, chat_to(tls_upstream.url))  # NO_PROXY=*: directly
    assert first.tunnels == second.tunnels == [f"127.0.0.1:{tls_upstream.port}"]
    assert transport.client.open_connections == 3
    await transport.aclose()


async def test_proxy_credentials_are_sent_and_a_refusal_does_not_show_them(
    trusting: ssl.SSLContext,
    tls_upstream: ServerThread,
    start_proxy: Callable[..., ConnectProxy],
    proxy_env: Callable[..., None],
) -> None:
    """user:password in the proxy URL become Proxy-Authorization; a 407 is a connect failure without them."""
    proxy = start_proxy(credentials="team:p@ss:word")
    proxy_env()
    transport = HttpTransport(ssl_context=trusting)
    authorized = proxy.url.replace("http://", "http://team:p%40ss%3Aword@")
    await completion(transport, chat_to(tls_upstream.url, proxy=authorized))
    assert proxy.heads[0][1]["proxy-authorization"] == "Basic " + base64.b64encode(b"team:p@ss:word").decode()

    wrong = proxy.url.replace("http://", "http://team:hunter2@")
    with pytest.raises(UpstreamError) as refused:
        await transport.send(chat_to(tls_upstream.url, proxy=wrong))
    message = str(refused.value)
    assert f"proxy http://127.0.0.1:{proxy.port} did not accept its credentials (407" in message
    assert "hunter2" not in message and "team" not in message
    with pytest.raises(UpstreamError, match=r"asks for credentials \(407 Proxy Authentication Required\)"):
        await transport.send(chat_to(tls_upstream.url, proxy=proxy.url))
    assert proxy.tunnels == [f"127.0.0.1:{tls_upstream.port}"]
    await transport.aclose()


@pytest.mark.parametrize("status", ["403 Forbidden", "502 Bad Gateway"])
async def test_a_refused_tunnel_is_a_connect_failure(
    status: str,
    trusting: ssl.SSLContext,
    tls_upstream: ServerThread,
    start_proxy: Callable[..., ConnectProxy],
    proxy_env: Callable[..., None],
) -> None:
    """A proxy that answers CONNECT with an error is an unreachable upstream, naming the proxy."""
    proxy = start_proxy(refuse=status)
    proxy_env(HTTPS_PROXY=proxy.url)
    transport = HttpTransport(ssl_context=trusting)
    with pytest.raises(UpstreamError, match=rf"unreachable: proxy {proxy.url} refused the tunnel \({status}\)"):
        await transport.send(chat_to(tls_upstream.url))
    assert transport.client.open_connections == 0
    await transport.aclose()


async def test_a_proxy_that_is_down_or_silent_is_a_connect_failure(
    trusting: ssl.SSLContext, tls_upstream: ServerThread, proxy_env: Callable[..., None]
) -> None:
    """Nothing listening is "unreachable", naming the proxy; a proxy that never answers CONNECT
    runs out the connect timeout."""
    down = f"http://127.0.0.1:{closed_port()}"
    proxy_env(HTTPS_PROXY=down)
    transport = HttpTransport(ssl_context=trusting)
    with pytest.raises(UpstreamError, match=rf"unreachable: proxy {down} is unreachable \(.+\)"):
        await transport.send(chat_to(tls_upstream.url))

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    request = chat_to(tls_upstream.url, proxy=f"http://127.0.0.1:{silent.getsockname()[1]}")
    request.connect_timeout = 0.3
    with pytest.raises(
        UpstreamTimeoutError, match=r"could not be reached through proxy http://127\.0\.0\.1:\d+ within"
    ):
        await transport.send(request)
    silent.close()
    await transport.aclose()


async def test_the_target_certificate_is_verified_inside_the_tunnel(
    tls_upstream: ServerThread, start_proxy: Callable[..., ConnectProxy], proxy_env: Callable[..., None]
) -> None:
    """TLS to the provider is verified end to end: a certificate the client does not trust fails."""
    proxy = start_proxy()
    proxy_env(HTTPS_PROXY=proxy.url)
    transport = HttpTransport()  # the system's authorities, which do not know the test CA
    with pytest.raises(UpstreamError, match=rf"TLS failed \(CERTIFICATE_VERIFY_FAILED\) through proxy {proxy.url}"):
        await transport.send(chat_to(tls_upstream.url))
    assert transport.client.open_connections == 0
    await transport.aclose()


async def test_an_http_deployment_goes_through_the_http_proxy_in_absolute_form(
    mock_upstream: ServerThread, start_proxy: Callable[..., ConnectProxy], proxy_env: Callable[..., None]
) -> None:
    """http:// targets are sent to HTTP_PROXY with the full URL and Proxy-Authorization, on one connection."""
    proxy = start_proxy(credentials="u:pw")
    proxy_env(HTTP_PROXY=proxy.url.replace("http://", "http://u:pw@"), HTTPS_PROXY=f"http://127.0.0.1:{closed_port()}")
    transport = HttpTransport()
    request = chat_to(mock_upstream.url)
    request.headers = {**request.headers, "Authorization": "Bearer sk-upstream-test-key-123456"}
    for _ in range(2):
        await completion(transport, request)
    assert proxy.connections == 1 and proxy.tunnels == []
    line, headers = proxy.heads[0]
    assert line == f"POST {mock_upstream.url}/v1/chat/completions HTTP/1.1"
    assert headers["host"] == f"127.0.0.1:{mock_upstream.port}"
    assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"u:pw").decode()
    await transport.aclose()

    # A 407 on a forwarded request is the proxy's refusal, not the provider's answer.
    unauthorized = HttpTransport(trust_env=False)
    request.proxy = proxy.url
    with pytest.raises(UpstreamError, match=rf"proxy {proxy.url} asks for credentials \(407"):
        await unauthorized.send(request)
    await unauthorized.aclose()


def run_in_thread(make: Callable[[], Coroutine[Any, Any, None]], loop: str) -> None:
    """Run a coroutine on a loop of its own in another thread (uvloop's, as the gateway runs)."""
    errors: list[BaseException] = []

    def run() -> None:
        factory = uvloop.new_event_loop if loop == "uvloop" else asyncio.new_event_loop
        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(make())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_inside_tls_through_an_https_proxy(
    loop: str,
    trusting: ssl.SSLContext,
    server_tls: ssl.SSLContext,
    tls_upstream: ServerThread,
    start_proxy: Callable[..., ConnectProxy],
    proxy_env: Callable[..., None],
) -> None:
    """An https:// proxy: TLS to the proxy, the target's TLS inside it, on asyncio's loop and uvloop."""
    proxy = start_proxy(tls=server_tls)
    proxy_env(HTTPS_PROXY=proxy.url)

    async def exchange() -> None:
        transport = HttpTransport(ssl_context=trusting)
        for _ in range(2):
            await completion(transport, chat_to(tls_upstream.url))
        await transport.aclose()

    run_in_thread(exchange, loop)
    assert proxy.url.startswith("https://")
    assert proxy.tunnels == [f"127.0.0.1:{tls_upstream.port}"]
