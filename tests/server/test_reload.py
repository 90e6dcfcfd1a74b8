"""SIGHUP (and POST /admin/reload) reloads a running gateway's configuration file, in one process
and with --workers, without dropping the requests in flight."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from quotagate.mock._app import WORDS

from ..conftest import MASTER_KEY, REDIS_URL, ServerThread, cli_key, closed_port, wait_until_ready
from .test_workers import worker

ENV = {**os.environ, "TEST_UPSTREAM_KEY": "sk-upstream-test-key-123456", "TEST_MASTER_KEY": MASTER_KEY}
MESSAGES = [{"role": "user", "content": "hi"}]


def write_config(
    path: Path,
    database: Path,
    upstream: str,
    tiers: str,
    models: dict[str, str],
    extra: str = "",
    api_key: str = "TEST_UPSTREAM_KEY",
) -> None:
    """``models`` maps the gateway's model names to the provider's."""
    lines = [
        f"database: sqlite:///{database}",
        "master_key: env:TEST_MASTER_KEY",
        "logging: {format: text}",
        f"tiers: {tiers}",
        "models:",
    ]
    for name, provider_model in models.items():
        lines.append(f"  - name: {name}")
        lines.append(
            f"    deployments: [{{provider: openai-compatible, base_url: '{upstream}/v1', "
            f"api_key: env:{api_key}, model: {provider_model}}}]"
        )
    path.write_text("\n".join(lines) + "\n" + extra)


def create_key(config: Path, tier: str = "free") -> str:
    return cli_key(config, tier, ENV)


class GatewayProcess:
    """`quotagate serve` in a process of its own, its log in a file."""

    def __init__(self, config: Path, *args: str) -> None:
        self.port = closed_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = config.with_name(f"gateway-{self.port}.log")
        self._log_file = self.log.open("wb")
        command = [sys.executable, "-m", "quotagate", "serve", "-c", str(config), "--port", str(self.port), *args]
        self.process = subprocess.Popen(command, env=ENV, stdout=self._log_file, stderr=self._log_file)
        wait_until_ready(self.port, timeout=60)

    def hangup(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def log_lines(self, text: str) -> list[str]:
        return [line for line in self.log.read_text(errors="replace").splitlines() if text in line]

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 30.0) -> str:
        """The ``count``-th log line holding ``text``, once there is one."""
        deadline = time.monotonic() + timeout
        while len(lines := self.log_lines(text)) < count:
            assert self.process.poll() is None, f"the gateway exited ({self.process.returncode})"
            assert time.monotonic() < deadline, f"no log line with {text!r}:\n{self.log.read_text()}"
            time.sleep(0.05)
        return lines[count - 1]

    def workers(self) -> list[int]:
        """The worker processes of a --workers gateway (not multiprocessing's resource tracker)."""
        children = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        found = []
        for pid in children.stdout.split():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in command:
                found.append(int(pid))
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)
        self._log_file.close()


@pytest.fixture
def gateway_process() -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def start(config: Path, *args: str) -> GatewayProcess:
        started.append(GatewayProcess(config, *args))
        return started[-1]

    yield start
    for gateway in started:
        gateway.stop()


def chat(url: str, key: str, model: str = "gpt-4o-mini") -> int:
    # A new connection each time: with several workers, whichever accepts it answers.
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": model, "messages": MESSAGES, "max_tokens": 4},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    return response.status_code


def answering_worker(url: str, key: str) -> str:
    """The worker that answered a request which counts against no limit (an error, which carries
    the request id)."""
    for _ in range(5):
        try:
            response = httpx.get(
                f"{url}/v1/models/no-such-model", headers={"Authorization": f"Bearer {key}"}, timeout=30
            )
            break
        except httpx.RemoteProtocolError:
            # A connection an outgoing worker accepted just as it stopped is closed unanswered
            # (uvicorn's shutdown closes connections with no request read yet); the SDKs retry it.
            time.sleep(0.05)
    assert response.status_code == 404, response.text
    return worker(response.headers["x-request-id"])


def workers_answering(
    url: str, key: str, count: int = 2, not_in: frozenset[str] = frozenset(), old_gone: bool = False
) -> set[str]:
    """Until ``count`` workers (none of ``not_in``) have answered; with ``old_gone``, also until
    none of ``not_in`` has answered for ten requests in a row: the supervisor starts the last new
    worker before it tells the last old one to stop, so for a moment both take connections."""
    deadline = time.monotonic() + 90
    seen: set[str] = set()
    new_in_a_row = 0
    while len(seen - not_in) < count or (old_gone and new_in_a_row < 10):
        assert time.monotonic() < deadline, f"workers seen: {seen}, old: {not_in}"
        worker = answering_worker(url, key)
        seen.add(worker)
        new_in_a_row = 0 if worker in not_in else new_in_a_row + 1
    return seen - not_in


class StreamReader(threading.Thread):
    """A streamed chat completion read with the OpenAI SDK in a thread: its text and usage."""

    def __init__(self, url: str, key: str, model: str) -> None:
        super().__init__(daemon=True)
        self.client = OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)
        self.model = model
        self.text = ""
        self.completion_tokens: int | None = None
        self.started = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            stream = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            for chunk in stream:
                if chunk.choices:
                    self.text += chunk.choices[0].delta.content or ""
                    if len(self.text) > 20:
                        self.started.set()
                if chunk.usage is not None:
                    self.completion_tokens = chunk.usage.completion_tokens
        except BaseException as exc:
            self.error = exc
            self.started.set()


def expected_text(tokens: int) -> str:
    return "".join(WORDS[i % len(WORDS)] for i in range(tokens))


def test_sighup_reloads_tier_limits_and_models(
    tmp_path: Path, mock_upstream: ServerThread, gateway_process: Callable[..., GatewayProcess]
) -> None:
    """After SIGHUP a raised RPM admits the key it refused and a newly added model answers; a quota
    whose definition did not change keeps its count; a changed database waits for a restart."""
    config, database = tmp_path / "quotagate.yaml", tmp_path / "quotagate.db"
    before = {"gpt-4o-mini": "gpt-4o-mini"}
    write_config(config, database, mock_upstream.url, "{free: {rpm: 2}, capped: {rpd: 2}}", before)
    free, capped = create_key(config, "free"), create_key(config, "capped")
    gateway = gateway_process(config)
    assert [chat(gateway.url, free) for _ in range(3)] == [200, 200, 429]
    assert [chat(gateway.url, capped) for _ in range(3)] == [200, 200, 429]
    assert chat(gateway.url, free, "gpt-4.1") == 404

    after = {**before, "gpt-4.1": "gpt-4.1"}
    write_config(config, tmp_path / "elsewhere.db", mock_upstream.url, "{free: {rpm: 5}, capped: {rpd: 2}}", after)
    gateway.hangup()
    line = gateway.wait_for_log("configuration reloaded")
    assert "tiers changed: free" in line
    assert "models added: gpt-4.1" in line
    assert "database changed" in gateway.wait_for_log("only at restart")

    # The keys are found: the database is still the one the gateway started with.
    assert chat(gateway.url, free) == 200
    assert chat(gateway.url, free, "gpt-4.1") == 200
    # The daily quota is the same limit as before, under the same key: still spent.
    assert chat(gateway.url, capped) == 429
    assert gateway.process.poll() is None


def test_stream_in_flight_during_sighup_completes(
    tmp_path: Path, start_mock: Callable[..., ServerThread], gateway_process: Callable[..., GatewayProcess]
) -> None:
    """A stream being relayed while SIGHUP reloads a configuration without its model arrives
    whole, with its usage; new requests already see the new configuration."""
    slow = start_mock(stream_chunk_delay_ms=50, completion_tokens=60)
    config, database = tmp_path / "quotagate.yaml", tmp_path / "quotagate.db"
    write_config(config, database, slow.url, "{free: {rpm: 100}}", {"gpt-4o-mini": "gpt-4o-mini"})
    key = create_key(config)
    gateway = gateway_process(config)
    reader = StreamReader(gateway.url, key, "gpt-4o-mini")
    reader.start()
    assert reader.started.wait(30)
    assert reader.error is None

    write_config(config, database, slow.url, "{free: {rpm: 100}}", {"gpt-4.1": "gpt-4.1"})
    gateway.hangup()
    assert "models removed: gpt-4o-mini" in gateway.wait_for_log("configuration reloaded")
    assert chat(gateway.url, key, "gpt-4o-mini") == 404
    assert reader.is_alive(), "the stream ended before the reload: it proves nothing"

    reader.join(30)
    assert reader.error is None
    assert reader.text == expected_text(60)
    assert reader.completion_tokens == 60
    assert gateway.process.poll() is None


def test_broken_configuration_on_sighup_is_logged_and_the_old_one_serves(
    tmp_path: Path, mock_upstream: ServerThread, gateway_process: Callable[..., GatewayProcess]
) -> None:
    """A file that fails validation, or names a secret the environment lacks, is one log line
    on SIGHUP; the gateway goes on serving the configuration it had."""
    config, database = tmp_path / "quotagate.yaml", tmp_path / "quotagate.db"
    models = {"gpt-4o-mini": "gpt-4o-mini"}
    write_config(config, database, mock_upstream.url, "{free: {rpm: 2}}", models)
    key = create_key(config)
    gateway = gateway_process(config)

    write_config(config, database, mock_upstream.url, "{free: {rpm: 0}}", models)
    gateway.hangup()
    line = gateway.wait_for_log("failed, still serving the previous configuration")
    assert "tiers.free.rpm: Input should be greater than 0" in line

    more = {**models, "gpt-4.1": "gpt-4.1"}
    write_config(config, database, mock_upstream.url, "{free: {rpm: 5}}", more, api_key="QUOTAGATE_TEST_UNSET")
    gateway.hangup()
    line = gateway.wait_for_log("failed, still serving the previous configuration", count=2)
    assert "environment variable QUOTAGATE_TEST_UNSET is not set" in line

    assert gateway.process.poll() is None
    # The first configuration, as it was: RPM 2, and no gpt-4.1.
    assert [chat(gateway.url, key) for _ in range(3)] == [200, 200, 429]
    assert chat(gateway.url, key, "gpt-4.1") == 404
    assert gateway.log_lines("configuration reloaded") == []


def test_admin_reload(
    tmp_path: Path, mock_upstream: ServerThread, gateway_process: Callable[..., GatewayProcess]
) -> None:
    """POST /admin/reload with the master key reloads as SIGHUP does and answers what changed; a
    broken file answers 400 naming the problem and changes nothing; other keys get 401."""
    config, database = tmp_path / "quotagate.yaml", tmp_path / "quotagate.db"
    models = {"gpt-4o-mini": "gpt-4o-mini"}
    write_config(config, database, mock_upstream.url, "{free: {rpm: 2}}", models)
    key = create_key(config)
    gateway = gateway_process(config)
    admin = httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30)

    assert httpx.post(f"{gateway.url}/admin/reload", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    write_config(config, database, mock_upstream.url, "{free: {rpm: 2}}", {**models, "gpt-4.1": "gpt-4.1"})
    reloaded = admin.post("/admin/reload")
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["changes"] == ["models added: gpt-4.1"]
    assert chat(gateway.url, key, "gpt-4.1") == 200
    audited = admin.get("/admin/audit").json()["data"][0]
    assert (audited["action"], audited["actor"], audited["details"]) == (
        "config.reload",
        "master",
        {"file": str(config)},
    )

    config.write_text(config.read_text() + "tiers: {free: {rpm: -1}}\n")
    refused = admin.post("/admin/reload")
    assert refused.status_code == 400
    assert "tiers.free.rpm" in refused.json()["error"]["message"]
    assert chat(gateway.url, key, "gpt-4.1") == 200
    admin.close()


def test_workers_reload_on_sighup(
    tmp_path: Path, start_mock: Callable[..., ServerThread], gateway_process: Callable[..., GatewayProcess]
) -> None:
    """With --workers 2, SIGHUP replaces both workers with the changed configuration (a raised
    RPM, a new model) but keeps the database until restart, and a stream on an old worker
    completes."""
    # 15 s: longer than replacing both workers, so the stream is still on its (old) worker when
    # that one is told to stop, whichever of the two it is.
    slow = start_mock(stream_chunk_delay_ms=50, completion_tokens=300)
    # Names of this test's own: deployments' breakers live in the shared Redis under their model.
    first, second = (f"reload-{uuid.uuid4().hex[:8]}" for _ in range(2))
    config, database = tmp_path / "quotagate.yaml", tmp_path / "quotagate.db"
    extra = f"redis: {REDIS_URL}\nledger: {{enabled: false}}\n"
    write_config(config, database, slow.url, "{free: {rpm: 3}}", {first: "gpt-4o-mini"}, extra)
    key, streaming_key = create_key(config), create_key(config)
    gateway = gateway_process(config, "--workers", "2")
    old = frozenset(workers_answering(gateway.url, key))
    assert [chat(gateway.url, key, first) for _ in range(4)] == [200, 200, 200, 429]
    reader = StreamReader(gateway.url, streaming_key, first)
    reader.start()
    assert reader.started.wait(30)
    assert reader.error is None

    models = {first: "gpt-4o-mini", second: "gpt-4.1"}
    write_config(config, tmp_path / "elsewhere.db", slow.url, "{free: {rpm: 50}}", models, extra)
    old_processes = set(gateway.workers())
    gateway.hangup()
    # Until both old worker processes are gone (the one with the stream once the stream is done),
    # and both workers answering are new ones. They find the key: the database is the one they
    # started with. (Ten new answers in a row alone were not enough: the kernel may hand every
    # connection to the new workers for a while as an old one still takes some.)
    deadline = time.monotonic() + 90
    while old_processes & set(gateway.workers()):
        assert time.monotonic() < deadline, f"old workers {old_processes} still running"
        time.sleep(0.1)
    workers_answering(gateway.url, key, not_in=old, old_gone=True)
    assert [chat(gateway.url, key, second) for _ in range(4)] == [200] * 4
    assert chat(gateway.url, key, first) == 200  # the raised RPM
    assert f"models added: {second}" in gateway.wait_for_log("configuration reloaded")
    assert "database changed" in gateway.wait_for_log("only at restart")
    reader.join(60)
    assert reader.error is None
    assert reader.text == expected_text(300)
    assert reader.completion_tokens == 300
    assert gateway.process.poll() is None


def test_workers_keep_the_last_good_configuration(
    tmp_path: Path, mock_upstream: ServerThread, gateway_process: Callable[..., GatewayProcess]
) -> None:
    """With --workers 2, a broken file on SIGHUP is logged and no worker is replaced; a worker that
    dies afterwards comes back with the last good configuration, not the broken file."""
    model = f"reload-{uuid.uuid4().hex[:8]}"
    config, database = tmp_path / "quotagate.yaml", tmp_path / "quotagate.db"
    extra = f"redis: {REDIS_URL}\nledger: {{enabled: false}}\n"
    write_config(config, database, mock_upstream.url, "{free: {rpm: 100}}", {model: "gpt-4o-mini"}, extra)
    key = create_key(config)
    gateway = gateway_process(config, "--workers", "2")
    old = frozenset(workers_answering(gateway.url, key))
    pids = gateway.workers()
    assert len(pids) == 2

    write_config(config, database, mock_upstream.url, "{free: {rpm: 0}}", {model: "gpt-4o-mini"}, extra)
    gateway.hangup()
    time.sleep(3)  # the supervisor looks at its signals every half second
    assert set(gateway.workers()) == set(pids)

    os.kill(pids[0], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while len(set(gateway.workers()) - {pids[0]}) < 2:
        assert gateway.process.poll() is None, "the supervisor gave up"
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(0.2)
    workers_answering(gateway.url, key, count=1, not_in=old)
    for _ in range(6):
        assert chat(gateway.url, key, model) == 200
    assert gateway.process.poll() is None
    assert "tiers.free.rpm" in gateway.wait_for_log("failed, still serving the previous configuration")


def test_a_reload_turns_the_semantic_cache_on(
    tmp_path: Path, mock_upstream: ServerThread, gateway_process: Callable[..., GatewayProcess]
) -> None:
    """A tier given `cache: {mode: semantic}` by a reload gets it at once: the embedding model is
    loaded then (a gateway without a semantic rule never loads it)."""
    config, database = tmp_path / "quotagate.yaml", tmp_path / "quotagate.db"
    models = {"gpt-4o-mini": "gpt-4o-mini"}
    write_config(config, database, mock_upstream.url, "{free: {rpm: 60}}", models)
    key = create_key(config)
    gateway = gateway_process(config)

    def ask(question: str) -> str | None:
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        time.sleep(0.2)
        return response.headers.get("x-quotagate-cache")

    assert ask("How do I reset my password?") is None
    write_config(config, database, mock_upstream.url, "{free: {rpm: 60, cache: {mode: semantic}}}", models)
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=60) as admin:
        reloaded = admin.post("/admin/reload")
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["changes"] == ["tiers changed: free"]
    assert [ask("How do I reset my password?"), ask("How can I reset my password?")] == ["miss", "semantic-hit"]
