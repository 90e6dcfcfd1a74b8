"""The embedded default: `quotagate serve` with nothing configured gives a working demo."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from quotagate.keys import KeyStore, hash_key
from quotagate.server._run import bound_socket

from ..conftest import REDIS_URL, closed_port


def demo_env(**extra: str) -> dict[str, str]:
    """The environment of a newcomer's first `quotagate serve`: no provider key, no configuration."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "QUOTAGATE_CONFIG", "QUOTAGATE_MASTER_KEY")
    }
    return {**env, "NO_COLOR": "1", **extra}


@contextmanager
def running_demo(folder: Path, port: int, env: dict[str, str] | None = None) -> Iterator[list[str]]:
    """`quotagate serve --port PORT` in ``folder``, with the lines it printed up to the demo key;
    stopped with Ctrl+C (SIGINT) at the end, which must end it cleanly."""
    process = subprocess.Popen(
        [sys.executable, "-m", "quotagate", "serve", "--port", str(port)],
        cwd=folder,
        env=env or demo_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if lines[-2:-1] == ["Demo key:"]:
                break
        yield lines
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl+C, as the banner says
        process.wait(10)
    assert process.returncode == 0


def test_serve_without_config_runs_a_usable_demo(tmp_path: Path) -> None:
    """It starts with SQLite and a mock upstream, prints a demo key last, and the SDK works with it."""
    port = closed_port()
    with running_demo(tmp_path, port) as lines:
        output = "\n".join(lines)
        assert "quotagate is running" in output, output
        key = lines[-1]
        assert key.startswith("qg-")
        assert f"curl http://127.0.0.1:{port}/v1/chat/completions -H 'Authorization: Bearer {key}'" in output
        assert (tmp_path / "quotagate.db").exists()

        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}])
        assert reply.choices[0].message.content
        assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]

        # The printed Python line runs as printed (the SDK is installed here, so no pip line).
        sdk_line = next(line for line in lines if " -c " in line)
        assert "pip install" not in output
        ran = subprocess.run(shlex.split(sdk_line), cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr


def test_demo_python_line_comes_with_the_sdk_install_when_it_is_missing(tmp_path: Path) -> None:
    """After `pip install -e .` (no openai), the demo prints the pip line that installs the SDK,
    for the same interpreter as the Python line that follows it, which then runs as printed."""
    # A sitecustomize that makes `openai` unimportable, as on an install without the client extra.
    hide = tmp_path / "without-openai"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text('import sys\nsys.modules["openai"] = None\n')
    pythonpath = os.pathsep.join(p for p in (str(hide), os.environ.get("PYTHONPATH")) if p)
    with running_demo(tmp_path, closed_port(), demo_env(PYTHONPATH=pythonpath)) as lines:
        sdk_index = next(i for i, line in enumerate(lines) if " -c " in line)
        install, sdk_line = shlex.split(lines[sdk_index - 1], comments=True), shlex.split(lines[sdk_index])
        assert install == [sys.executable, "-m", "pip", "install", "openai"]
        assert sdk_line[0] == sys.executable
        # Once installed (it is, without the sitecustomize), the line runs as printed.
        ran = subprocess.run(sdk_line, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr


def test_second_demo_on_a_busy_port_fails_in_one_line_and_keeps_the_demo_key(tmp_path: Path) -> None:
    """A second `quotagate serve` on the port of a running demo exits non-zero with one line,
    and leaves the running gateway's demo key in place."""
    port = closed_port()
    with running_demo(tmp_path, port) as lines:
        key = lines[-1]
        second = subprocess.run(
            [sys.executable, "-m", "quotagate", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=demo_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

        async def stored() -> bool:
            store = KeyStore.from_url(f"sqlite:///{tmp_path / 'quotagate.db'}")
            try:
                return await store.find_by_hash(hash_key(key)) is not None
            finally:
                await store.close()

        # The running gateway's demo key is still stored: the second serve used to delete it, then
        # fail to bind.
        assert asyncio.run(stored())
        output = second.stdout + second.stderr
        assert second.returncode != 0
        assert output.strip() == (
            f"error: cannot listen on 127.0.0.1:{port}: address already in use (is another quotagate running "
            "there? stop it, or choose another port with --port)"
        )
        response = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200


@pytest.mark.parametrize("mode", ["config", "workers"])
def test_serve_with_a_config_on_a_busy_port_fails_in_one_line(tmp_path: Path, mode: str) -> None:
    """`serve --config` and `serve --workers 2` on a taken port exit non-zero with one line, no traceback."""
    config = tmp_path / "quotagate.yaml"
    config.write_text(
        f"database: sqlite:///{tmp_path / 'quotagate.db'}\nredis: {REDIS_URL}\ntiers: {{free: {{}}}}\n"
        "models: [{name: m, deployments: [{provider: vllm, base_url: 'http://127.0.0.1:9/v1'}]}]\n"
    )
    taken = bound_socket("127.0.0.1", 0)
    taken.listen()
    port = taken.getsockname()[1]
    workers = ["--workers", "2"] if mode == "workers" else []
    try:
        result = subprocess.run(
            [sys.executable, "-m", "quotagate", "serve", "-c", str(config), "--port", str(port), *workers],
            env=demo_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        taken.close()
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0
    assert len(output.splitlines()) == 1 and "address already in use" in output.lower(), output
