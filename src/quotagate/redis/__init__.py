"""Redis for every part of quotagate that shares state between nodes, behind one small interface.

The limits, the deployments' breakers and cooldowns, the ledger's stream and the alerts all talk
to a ``RedisClient``; ``connect(url)`` chooses the client by the URL, as the ``limits`` library does:

- ``redis://HOST:PORT/DB``, ``rediss://...`` (TLS; ``?ssl_ca_certs=CA.pem&ssl_certfile=CERT.pem
  &ssl_keyfile=KEY.pem`` for a private CA and a client certificate), ``unix://PATH``: one server,
  over quotagate's pipelined connection (``RedisConnection``), which costs a fraction of
  redis-py's CPU per command (bench/NOTES.md). ``?client=redis-py`` takes redis-py instead.
- ``redis+cluster://HOST:PORT[,HOST:PORT...]`` (``rediss+cluster://`` for TLS): a Redis Cluster,
  through redis-py's ``RedisCluster``. Keys that one script touches share a hash tag.
- ``redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`` (``rediss+sentinel://``): the
  primary that the Sentinels name for SERVICE, found again after a failover; a password in the
  URL is the primary's, ``?sentinel_password=`` the Sentinels' own.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ._pipelined import LuaScript, RedisConnection, RedisReplyError

__all__ = ["LuaScript", "RedisClient", "RedisConnection", "RedisReplyError", "connect", "describe_url"]

URL_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
    "rediss+sentinel://",
)


class RedisClient(Protocol):
    """What quotagate needs of Redis: commands and scripts, a readiness check, a close.

    Replies are as Redis sent them (bytes, integers, lists); an error reply raises
    ``RedisReplyError``, an unreachable Redis ``ConnectionError``, and every call ends within
    ``timeout`` seconds (``TimeoutError``), so callers need no timer of their own.
    """

    @property
    def timeout(self) -> float | None:
        """Every call's deadline; None for a caller's own redis-py client, on its socket timeouts."""

    @property
    def cluster(self) -> bool:
        """True on a Redis Cluster: the keys of one script must share a hash slot."""

    async def execute(self, *args: Any) -> Any: ...

    async def evalsha(self, script: LuaScript, keys: list[Any], args: list[Any]) -> Any: ...

    async def check(self) -> None:
        """Raise unless this Redis can serve the gateway."""

    async def aclose(self) -> None: ...


def connect(url: str, *, timeout: float, connect_timeout: float) -> RedisClient:
    """The client for ``url`` (see the module's docstring); nothing connects until the first call."""
    scheme, _, rest = url.partition("://")
    describe = describe_url(url)
    if scheme in ("redis+cluster", "rediss+cluster"):
        from ._redispy import cluster_client  # redis-py loads only where it is used (~0.1 s)

        nodes, options, _ = _parse_hosts(rest, tls=scheme.startswith("rediss"), default_port=6379)
        options.pop("db", None)
        return cluster_client(nodes, options, timeout=timeout, connect_timeout=connect_timeout, describe=describe)
    if scheme in ("redis+sentinel", "rediss+sentinel"):
        from ._redispy import sentinel_client

        sentinels, options, path = _parse_hosts(rest, tls=scheme.startswith("rediss"), default_port=26379)
        service, _, db = path.strip("/").partition("/")
        if not service:
            raise ValueError(f"{describe}: name the Sentinel service: redis+sentinel://HOST:PORT/SERVICE[/DB]")
        sentinel_options = {}
        if "sentinel_password" in options:
            sentinel_options["password"] = options.pop("sentinel_password")
        if "sentinel_username" in options:
            sentinel_options["username"] = options.pop("sentinel_username")
        if options.get("ssl"):
            sentinel_options.update({k: v for k, v in options.items() if k.startswith("ssl")})
        options["db"] = int(db or options.get("db", 0))
        return sentinel_client(
            sentinels,
            service,
            options,
            sentinel_options,
            timeout=timeout,
            connect_timeout=connect_timeout,
            describe=describe,
        )
    if scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"not a Redis URL: {describe} (expected one of {', '.join(URL_SCHEMES)})")
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    if ("client", "redis-py") in query:
        from ._redispy import standalone_client

        plain = urlunsplit(parts._replace(query=urlencode([item for item in query if item[0] != "client"])))
        return standalone_client(plain, timeout=timeout, connect_timeout=connect_timeout, describe=describe)
    return RedisConnection(url, timeout=timeout, connect_timeout=connect_timeout)


def describe_url(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    scheme, _, rest = url.partition("://")
    credentials, at, hosts = rest.rpartition("@")
    if not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}://{user + ':' if user else ''}***@{hosts}"


def _parse_hosts(rest: str, *, tls: bool, default_port: int) -> tuple[list[tuple[str, int]], dict[str, Any], str]:
    """``[user:password@]HOST:PORT[,HOST:PORT...][/PATH][?QUERY]`` -> hosts, redis-py options, path."""
    credentials, at, location = rest.rpartition("@")
    hosts_text, slash, tail = location.partition("/")
    path_and_query = slash + tail
    path, _, query = path_and_query.partition("?")
    if "?" in hosts_text:  # no path: HOST:PORT?QUERY
        hosts_text, _, query = hosts_text.partition("?")
    nodes: list[tuple[str, int]] = []
    for item in hosts_text.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon:
            host, port = item.strip(), str(default_port)
        if not host:
            raise ValueError(f"no host in {item!r}")
        nodes.append((host.strip("[]"), int(port)))
    options: dict[str, Any] = {}
    if at:
        user, _, password = credentials.partition(":")
        if user:
            options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    if tls:
        options["ssl"] = True
    for name, value in parse_qsl(query):
        options[name] = value
    return nodes, options, path
