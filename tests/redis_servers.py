"""Real local Redis topologies for tests: a 6-node Redis Cluster, a Sentinel-managed primary/replica
pair and a TLS-only server with client certificates.

Fakes cannot show what a gateway does when a cluster primary dies or Sentinel promotes a replica, so
these start real ``redis-server`` processes on 127.0.0.1, each topology in its own temporary
directory. Every wait is bounded (a ``RedisTopologyError`` after about 20 s) and ``stop()`` kills and
reaps every process and removes the directory; the classes are context managers, and the fixtures at
the bottom use them so that teardown happens even when the test fails.

Tests import the fixtures explicitly::

    from ..redis_servers import local_cluster as local_cluster

(the ``as`` form marks an explicit re-export, so ruff reports neither F401 nor F811 when a test
takes the fixture as a parameter).
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import pytest
from redis.client import Redis
from redis.crc import key_slot
from redis.exceptions import RedisError

from .conftest import closed_port

#: How long any start-up or failover wait may take before it raises.
TIMEOUT = 20.0
#: A cluster node also listens on port + 10000 (the cluster bus), which must stay a valid port.
_MAX_CLUSTER_PORT = 55535
_SLOTS = 16384
_POLL = 0.05


class RedisTopologyError(RuntimeError):
    """A local Redis topology failed to start, to fail over, or to answer in time."""


def _binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise RedisTopologyError(f"{name} is needed (Debian package redis-server / openssl)")
    return path


def _wait(what: str, check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll ``check`` until it is true; exceptions count as "not yet". Raises after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if check():
                return
        except (RedisError, OSError, ValueError, KeyError, IndexError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error is not None else ""
            raise RedisTopologyError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(_POLL)


def _client(port: int, **kwargs: Any) -> Redis:
    """A short-lived admin client; small timeouts so that a dead node cannot stall a wait."""
    options: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 1.0, "decode_responses": True}
    options.update(kwargs)
    return Redis(host="127.0.0.1", port=port, **options)


def _command(port: int, *args: str | int, **kwargs: Any) -> Any:
    """One command on a fresh connection, closed afterwards."""
    with _client(port, **kwargs) as client:
        return client.execute_command(*args)


def _info(port: int, section: str, **kwargs: Any) -> dict[str, Any]:
    with _client(port, **kwargs) as client:
        info: dict[str, Any] = client.info(section)
        return info


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


_LIVE: set[_Topology] = set()


@atexit.register
def _stop_leftovers() -> None:
    # A last resort for an interrupted session: fixtures normally stop everything first.
    for topology in list(_LIVE):
        topology.stop()


class _Topology:
    """Processes and a temporary directory shared by the topologies; ``stop()`` cleans both up."""

    kind = "redis"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"quotagate-{self.kind}-"))
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._confs: dict[int, Path] = {}
        self._args: dict[int, tuple[str, ...]] = {}
        self._client_kwargs: dict[str, Any] = {}
        _LIVE.add(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Kill and reap every process, then remove the working directory. Safe to call twice."""
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL cannot be ignored: never long
                proc.wait(timeout=TIMEOUT)
        shutil.rmtree(self.dir, ignore_errors=True)
        _LIVE.discard(self)

    def _start_or_stop(self, start: Callable[[], None]) -> None:
        """Run ``start``; on any failure stop what was already started, then re-raise."""
        try:
            start()
        except BaseException:
            self.stop()
            raise

    def is_running(self, port: int) -> bool:
        """Whether this topology's process on ``port`` is alive (False after ``kill``)."""
        proc = self._procs.get(port)
        return proc is not None and proc.poll() is None

    def _log(self, port: int) -> Path:
        return self.dir / f"redis-{port}.log"

    def _log_tail(self, port: int, lines: int = 15) -> str:
        try:
            return "\n".join(self._log(port).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _spawn(self, port: int, conf_lines: Sequence[str], *args: str) -> None:
        """Write ``conf_lines`` (plus the house defaults) and start redis-server, waiting until the
        process on ``port`` is ours and answers (INFO's process_id is checked, so a stranger that
        grabbed the port is not mistaken for it)."""
        conf = self.dir / f"redis-{port}.conf"
        defaults = [
            "bind 127.0.0.1",
            f"dir {self.dir}",
            f"logfile {self._log(port)}",
            f"dbfilename dump-{port}.rdb",  # replicas write received RDBs here: one file per node
            'save ""',
            "appendonly no",
            # A full sync otherwise waits 5 s for more replicas to share the transfer.
            "repl-diskless-sync-delay 0",
        ]
        conf.write_text("\n".join([*defaults, *conf_lines, ""]))
        self._confs[port], self._args[port] = conf, args
        self._respawn(port)

    def _respawn(self, port: int) -> None:
        proc = subprocess.Popen(
            [_binary("redis-server"), str(self._confs[port]), *self._args[port]],
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            cwd=self.dir,
        )
        self._procs[port] = proc

        def ours() -> bool:
            if proc.poll() is not None:
                raise RedisTopologyError(
                    f"redis-server for port {port} exited with {proc.returncode}:\n{self._log_tail(port)}"
                )
            return bool(_info(port, "server", **self._client_kwargs)["process_id"] == proc.pid)

        _wait(f"redis-server on port {port} to answer", ours)

    def _start_on_free_port(self, pick: Callable[[], int], conf: Callable[[int], Sequence[str]], *args: str) -> int:
        """Start a server on a port from ``pick``; if another process took the port in the meantime
        ("Address already in use"), try again with a new one."""
        for _ in range(5):
            port = pick()
            try:
                self._spawn(port, conf(port), *args)
            except RedisTopologyError as exc:
                if "already in use" not in str(exc):
                    raise
                self._procs.pop(port, None)
                continue
            return port
        raise RedisTopologyError("could not find a free port for redis-server")


# --- Redis Cluster -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterNodeInfo:
    """One line of CLUSTER NODES, as one node sees it."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})

    def serves(self, slot: int) -> bool:
        return any(low <= slot <= high for low, high in self.slots)


def _parse_cluster_nodes(text: str) -> list[ClusterNodeInfo]:
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@", 1)[0].split(",", 1)[0]
        port_text = address.rsplit(":", 1)[-1]
        slots = []
        for item in fields[8:]:
            if item.startswith("["):  # a slot being imported or migrated
                continue
            low, _, high = item.partition("-")
            slots.append((int(low), int(high or low)))
        nodes.append(
            ClusterNodeInfo(
                id=fields[0],
                port=int(port_text) if port_text.isdigit() else 0,
                flags=frozenset(fields[2].split(",")),
                master_id=None if fields[3] == "-" else fields[3],
                connected=fields[7] == "connected",
                slots=tuple(slots),
            )
        )
    return nodes


def _cluster_port(taken: set[int]) -> int:
    """A free port below 55535 whose cluster-bus port (+10000) is free too, clashing with neither
    the ports nor the bus ports already chosen."""
    busy = taken | {port + 10000 for port in taken}
    for _ in range(500):
        port = closed_port()
        if port < _MAX_CLUSTER_PORT and port not in busy and port + 10000 not in busy and _port_is_free(port + 10000):
            return port
    raise RedisTopologyError("no free port pair (port, port + 10000) found for a cluster node")


class LocalCluster(_Topology):
    """A real Redis Cluster on 127.0.0.1: 3 primaries with one replica each, created by
    ``redis-cli --cluster create``. ``cluster-node-timeout`` is 1000 ms so a killed primary is
    replaced within a few seconds."""

    kind = "cluster"

    def __init__(self, primaries: int = 3, replicas: int = 1, timeout: float = TIMEOUT) -> None:
        super().__init__()
        self.ports: list[int] = []
        self.timeout = timeout
        self._slots_of_killed: dict[int, tuple[tuple[int, int], ...]] = {}
        self._start_or_stop(lambda: self._start(primaries * (1 + replicas), replicas))

    @property
    def url(self) -> str:
        """The gateway's cluster URL, naming three of the nodes."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:3])

    @property
    def plain_url(self) -> str:
        """A single-node URL for one cluster node, as a user who forgot about the cluster writes it."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def _node_conf(self, port: int) -> list[str]:
        return [
            f"port {port}",
            "cluster-enabled yes",
            f"cluster-config-file nodes-{port}.conf",
            "cluster-node-timeout 1000",
            # Promote a replica however long ago it last heard from its primary.
            "cluster-replica-validity-factor 0",
        ]

    def _start(self, count: int, replicas: int) -> None:
        for _ in range(count):
            port = self._start_on_free_port(lambda: _cluster_port(set(self.ports)), self._node_conf)
            self.ports.append(port)
        command = [
            _binary("redis-cli"),
            "--cluster",
            "create",
            *(f"127.0.0.1:{port}" for port in self.ports),
            "--cluster-replicas",
            str(replicas),
            "--cluster-yes",
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=self.timeout
            )
        except subprocess.TimeoutExpired as exc:
            raise RedisTopologyError(f"redis-cli --cluster create took over {self.timeout:g} s") from exc
        if result.returncode != 0 or "All 16384 slots covered" not in result.stdout:
            raise RedisTopologyError(f"redis-cli --cluster create failed:\n{result.stdout}\n{result.stderr}")
        _wait("the cluster to be ok on every node with every replica attached", self._healthy, self.timeout)

    # -- views ----------------------------------------------------------------------------------

    def nodes(self, port: int | None = None) -> list[ClusterNodeInfo]:
        """CLUSTER NODES as seen by ``port`` (default: the first running node)."""
        return _parse_cluster_nodes(str(_command(port or self._any_running(), "CLUSTER", "NODES")))

    def _any_running(self) -> int:
        for port in self.ports:
            if self.is_running(port):
                return port
        raise RedisTopologyError("no cluster node is running")

    def _running(self) -> list[int]:
        return [port for port in self.ports if self.is_running(port)]

    def _cluster_ok(self, port: int) -> bool:
        text = str(_command(port, "CLUSTER", "INFO"))
        return "cluster_state:ok" in text

    def _healthy(self) -> bool:
        """Every running node: cluster_state ok, sees every running node connected, every slot on a
        live primary; every running replica in sync with its primary."""
        running = set(self._running())
        for port in running:
            if not self._cluster_ok(port):
                return False
            view = [node for node in self.nodes(port) if node.port in running]
            if len(view) != len(running) or any(node.failed or not node.connected for node in view):
                return False
            if sum(high - low + 1 for node in view if node.is_primary for low, high in node.slots) != _SLOTS:
                return False
            me = next((node for node in view if node.port == port), None)
            if me is None:
                return False
            if not me.is_primary and _info(port, "replication").get("master_link_status") != "up":
                return False
        return True

    # -- queries --------------------------------------------------------------------------------

    def primary_port_for(self, key: str) -> int:
        """The port of the live primary currently serving ``key``'s slot."""
        slot = key_slot(key.encode())
        for node in self.nodes():
            if node.is_primary and not node.failed and self.is_running(node.port) and node.serves(slot):
                return node.port
        raise RedisTopologyError(f"no live primary serves slot {slot} (key {key!r}); wait_for_failover first?")

    def replica_port_of(self, primary_port: int) -> int:
        """The port of a live replica of the primary on ``primary_port``."""
        view = self.nodes()
        primary = next((node for node in view if node.port == primary_port and node.is_primary), None)
        if primary is None:
            raise RedisTopologyError(f"port {primary_port} is not a primary")
        for node in sorted(view, key=lambda node: node.port):
            if node.master_id == primary.id and not node.failed and self.is_running(node.port):
                return node.port
        raise RedisTopologyError(f"the primary on port {primary_port} has no live replica")

    def primary_ports(self) -> list[int]:
        """The ports of the live primaries that serve slots."""
        return sorted(
            node.port
            for node in self.nodes()
            if node.is_primary and node.slots and not node.failed and self.is_running(node.port)
        )

    # -- actions --------------------------------------------------------------------------------

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port`` (no shutdown, no goodbye to the cluster)."""
        others = [other for other in self._running() if other != port]
        if others:
            view = self.nodes(others[0])
            self._slots_of_killed[port] = next((node.slots for node in view if node.port == port), ())
        proc = self._procs[port]
        proc.kill()
        proc.wait(timeout=TIMEOUT)

    def wait_for_failover(self, dead_port: int, timeout: float = TIMEOUT) -> int:
        """Wait until the slots of the killed primary on ``dead_port`` are served by a promoted
        replica that answers ROLE as master, and cluster_state is ok on every surviving node.
        Returns the promoted node's port."""
        slots = self._slots_of_killed.get(dead_port)
        if self.is_running(dead_port) or slots is None:
            raise RedisTopologyError(f"kill({dead_port}) first")
        if not slots:
            raise RedisTopologyError(f"the node on port {dead_port} was a replica: there is nothing to fail over")
        promoted: list[int] = []

        def done() -> bool:
            owners = set()
            for port in self._running():
                if not self._cluster_ok(port):
                    return False
                view = self.nodes(port)
                owner = [node for node in view if node.is_primary and not node.failed and node.serves(slots[0][0])]
                if len(owner) != 1 or owner[0].port == dead_port or not self.is_running(owner[0].port):
                    return False
                owners.add(owner[0].port)
            if len(owners) != 1:
                return False
            (port,) = owners
            if _command(port, "ROLE")[0] != "master":
                return False
            promoted[:] = [port]
            return True

        _wait(f"a replica to take over the slots of the primary on port {dead_port}", done, timeout)
        return promoted[0]

    def restart(self, port: int, timeout: float = TIMEOUT) -> None:
        """Start a killed node again (same port, same nodes.conf); it rejoins as a replica. Waits
        until the whole cluster is healthy, so a module-scoped cluster can be repaired after a
        failover test."""
        if self.is_running(port):
            raise RedisTopologyError(f"the node on port {port} is running")
        self._respawn(port)
        self._slots_of_killed.pop(port, None)
        _wait(f"the restarted node on port {port} to rejoin the cluster", self._healthy, timeout)

    def flushall(self) -> None:
        """FLUSHALL on every live primary (replicas follow)."""
        for port in self.primary_ports():
            _command(port, "FLUSHALL")


# --- Sentinel ------------------------------------------------------------------------------------


def _pairs(item: Any) -> dict[str, str]:
    """A Sentinel reply entry (a flat [key, value, ...] list, or already a dict) as a dict."""
    if isinstance(item, Mapping):
        return {str(key): str(value) for key, value in item.items()}
    return {str(item[i]): str(item[i + 1]) for i in range(0, len(item) - 1, 2)}


class LocalSentinel(_Topology):
    """One primary, one replica and three sentinels (quorum 2, down-after 1000 ms) on 127.0.0.1, so
    that killing the primary really triggers a Sentinel failover within a few seconds."""

    kind = "sentinel"
    service = "mymaster"

    def __init__(self, timeout: float = TIMEOUT) -> None:
        super().__init__()
        self.timeout = timeout
        self.primary_port = 0
        self.replica_port = 0
        self.sentinel_ports: list[int] = []
        self._start_or_stop(self._start)

    @property
    def url(self) -> str:
        """The gateway's Sentinel URL: all three sentinels, the service name and database 0."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def _start(self) -> None:
        self.primary_port = self._start_on_free_port(closed_port, lambda port: [f"port {port}"])
        self.replica_port = self._start_on_free_port(
            closed_port, lambda port: [f"port {port}", f"replicaof 127.0.0.1 {self.primary_port}"]
        )

        # Sentinels learn replicas from the primary's INFO, polled every 10 s: start them only once
        # the replica is attached, so that their first INFO already names it.
        def replica_synced() -> bool:
            link = _info(self.replica_port, "replication").get("master_link_status")
            return bool(link == "up" and _info(self.primary_port, "replication").get("connected_slaves") == 1)

        _wait("the replica to sync with the primary", replica_synced, self.timeout)

        def sentinel_conf(port: int) -> list[str]:
            # Sentinel rewrites its config file (myid, known replicas and sentinels): one per sentinel.
            return [
                f"port {port}",
                f"sentinel monitor {self.service} 127.0.0.1 {self.primary_port} 2",
                f"sentinel down-after-milliseconds {self.service} 1000",
                f"sentinel failover-timeout {self.service} 5000",
                f"sentinel parallel-syncs {self.service} 1",
            ]

        for _ in range(3):
            self.sentinel_ports.append(self._start_on_free_port(closed_port, sentinel_conf, "--sentinel"))
        _wait(
            "every sentinel to know the primary, the replica and the other sentinels",
            self._sentinels_ready,
            self.timeout,
        )

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            master = _pairs(_command(port, "SENTINEL", "MASTER", self.service))
            if master.get("flags") != "master" or int(master["port"]) != self.primary_port:
                return False
            replicas = [_pairs(item) for item in _command(port, "SENTINEL", "REPLICAS", self.service)]
            if [(int(r["port"]), r["flags"]) for r in replicas] != [(self.replica_port, "slave")]:
                return False
            others = {int(_pairs(item)["port"]) for item in _command(port, "SENTINEL", "SENTINELS", self.service)}
            if others != set(self.sentinel_ports) - {port}:
                return False
        return True

    def _master_addr(self, sentinel_port: int) -> int:
        reply = _command(sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        if not reply:
            raise RedisTopologyError(f"sentinel {sentinel_port} does not know {self.service}")
        # redis-py may already have parsed the reply into (host, port).
        return int(reply[1])

    def current_primary_port(self) -> int:
        """The primary's port according to the first sentinel that answers."""
        last: Exception | None = None
        for port in self.sentinel_ports:
            if not self.is_running(port):
                continue
            try:
                return self._master_addr(port)
            except (RedisError, OSError) as exc:
                last = exc
        raise RedisTopologyError(f"no sentinel answered GET-MASTER-ADDR-BY-NAME: {last!r}")

    def kill_primary(self) -> int:
        """SIGKILL the current primary; returns its port (for ``wait_for_failover``)."""
        port = self.current_primary_port()
        proc = self._procs[port]
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        return port

    def wait_for_failover(self, old_port: int, timeout: float = TIMEOUT) -> int:
        """Wait until every sentinel names another, live node as primary and that node answers ROLE
        as master. Returns the new primary's port."""
        new: list[int] = []

        def done() -> bool:
            named = {self._master_addr(port) for port in self.sentinel_ports if self.is_running(port)}
            if len(named) != 1:
                return False
            (port,) = named
            if port == old_port or not self.is_running(port) or _command(port, "ROLE")[0] != "master":
                return False
            new[:] = [port]
            return True

        _wait(f"the sentinels to promote a replica in place of port {old_port}", done, timeout)
        return new[0]


# --- TLS -----------------------------------------------------------------------------------------

_OPENSSL_CONF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = quotagate-test
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


class LocalTlsRedis(_Topology):
    """A redis-server reachable only over TLS (``port 0``, ``tls-port``) that demands a client
    certificate, with a private CA and server/client certificates made by the openssl CLI."""

    kind = "tls"

    def __init__(self, timeout: float = TIMEOUT) -> None:
        super().__init__()
        self.timeout = timeout
        self.port = 0
        self.ca_file = str(self.dir / "ca.crt")
        self.client_cert = str(self.dir / "client.crt")
        self.client_key = str(self.dir / "client.key")
        self._client_kwargs = self.client_kwargs()
        self._start_or_stop(self._start)

    @property
    def url(self) -> str:
        """A rediss:// URL carrying the CA and client certificate in redis-py's query arguments."""
        return (
            f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={quote(self.ca_file)}"
            f"&ssl_certfile={quote(self.client_cert)}&ssl_keyfile={quote(self.client_key)}"
        )

    def client_kwargs(self) -> dict[str, Any]:
        """redis-py keyword arguments for a client that trusts the CA and presents the client cert."""
        return {
            "ssl": True,
            "ssl_ca_certs": self.ca_file,
            "ssl_certfile": self.client_cert,
            "ssl_keyfile": self.client_key,
        }

    def _openssl(self, *args: str) -> None:
        try:
            result = subprocess.run(
                [_binary("openssl"), *args],
                capture_output=True,
                text=True,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                timeout=self.timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise RedisTopologyError(f"openssl {args[0]} took over {self.timeout:g} s") from exc
        if result.returncode != 0:
            raise RedisTopologyError(f"openssl {' '.join(args)} failed:\n{result.stderr}")

    def _make_certificates(self) -> None:
        conf = self.dir / "openssl.cnf"
        conf.write_text(_OPENSSL_CONF)
        key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        self._openssl(
            "req", "-x509", "-new", "-config", str(conf), "-extensions", "ca", *key,
            "-keyout", "ca.key", "-out", "ca.crt", "-days", "7", "-subj", "/CN=quotagate test CA",
        )  # fmt: skip
        for serial, (name, common_name) in enumerate((("server", "127.0.0.1"), ("client", "quotagate test client")), 2):
            self._openssl(
                "req", "-new", "-config", str(conf), *key,
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={common_name}",
            )  # fmt: skip
            self._openssl(
                "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-set_serial", str(serial), "-days", "7", "-extfile", str(conf), "-extensions", name,
                "-out", f"{name}.crt",
            )  # fmt: skip

    def _start(self) -> None:
        self._make_certificates()

        def conf(port: int) -> list[str]:
            return [
                "port 0",
                f"tls-port {port}",
                f"tls-cert-file {self.dir / 'server.crt'}",
                f"tls-key-file {self.dir / 'server.key'}",
                f"tls-ca-cert-file {self.ca_file}",
                "tls-auth-clients yes",
            ]

        self.port = self._start_on_free_port(closed_port, conf)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[LocalCluster]:
    """A 6-node cluster shared by a module. A test that kills a node should ``restart`` it (or the
    later tests of the module see a cluster with a primary that has no replica)."""
    with LocalCluster() as cluster:
        yield cluster


@pytest.fixture
def local_sentinel() -> Iterator[LocalSentinel]:
    """A fresh Sentinel setup per test: failover tests leave it with a dead primary."""
    with LocalSentinel() as sentinel:
        yield sentinel


@pytest.fixture(scope="module")
def local_tls_redis() -> Iterator[LocalTlsRedis]:
    """A TLS-only Redis with client-certificate authentication, shared by a module."""
    with LocalTlsRedis() as server:
        yield server
