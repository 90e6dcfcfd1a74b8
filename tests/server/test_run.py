"""`quotagate serve` as a real process: a graceful stop is a clean exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ServerThread, closed_port, wait_until_ready
from .test_workers import write_config


@pytest.mark.parametrize("how", ["config", "demo"])
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_graceful_stop_exits_0(tmp_path: Path, mock_upstream: ServerThread, how: str, stop: signal.Signals) -> None:
    """SIGTERM or SIGINT stops a single-process gateway (with a configuration file, and the
    embedded demo) after it shut down gracefully, with exit status 0 rather than death by the
    signal (-15), so that supervisors see a clean stop. (--workers: test_workers checks it.)"""
    port = closed_port()
    command = [sys.executable, "-m", "quotagate", "serve", "--port", str(port)]
    if how == "config":
        command += ["-c", str(write_config(tmp_path, mock_upstream.url, ""))]
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "QUOTAGATE_CONFIG")}
    gateway = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_until_ready(port)
        gateway.send_signal(stop)
        assert gateway.wait(30) == 0
    finally:
        gateway.kill()
        gateway.wait()
