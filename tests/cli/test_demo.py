"""The embedded default: `quotagate serve` with nothing configured gives a working demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from openai import OpenAI

from ..conftest import closed_port


def test_serve_without_config_runs_a_usable_demo(tmp_path: Path) -> None:
    """It starts with SQLite and a mock upstream, prints a demo key last, and the SDK works with it."""
    port = closed_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "QUOTAGATE_CONFIG", "QUOTAGATE_MASTER_KEY")
    }
    env["NO_COLOR"] = "1"
    process = subprocess.Popen(
        [sys.executable, "-m", "quotagate", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
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
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl+C, as the banner says
        process.wait(10)
    assert process.returncode == 0
