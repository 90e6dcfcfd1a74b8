"""Load-test your own quotagate deployment with Locust (pip install locust).

    QUOTAGATE_KEY=qg-... locust -f bench/locustfile.py --host http://127.0.0.1:4000

Each user sends chat completions, plain and streamed, and checks the answers; rate-limit
refusals (429) are counted as such, not as failures of the gateway.
"""

from __future__ import annotations

import os

from locust import HttpUser, between, task  # type: ignore[import-not-found]

BODY = {
    "model": os.environ.get("QUOTAGATE_MODEL", "gpt-4o-mini"),
    "messages": [{"role": "user", "content": "Say hello."}],
    "max_tokens": 16,
}


class GatewayUser(HttpUser):  # type: ignore[misc]
    wait_time = between(0.0, 0.1)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {os.environ['QUOTAGATE_KEY']}"

    @task(4)
    def chat(self) -> None:
        with self.client.post("/v1/chat/completions", json=BODY, catch_response=True, name="chat") as response:
            if response.status_code == 429:
                response.success()  # the gateway doing its job
            elif response.status_code != 200 or "choices" not in response.json():
                response.failure(f"HTTP {response.status_code}")

    @task(1)
    def chat_stream(self) -> None:
        with self.client.post(
            "/v1/chat/completions",
            json={**BODY, "stream": True},
            stream=True,
            catch_response=True,
            name="chat (stream)",
        ) as response:
            if response.status_code == 429:
                response.success()
                return
            text = b"".join(response.iter_content(None))
            if response.status_code != 200 or not text.rstrip().endswith(b"[DONE]"):
                response.failure(f"HTTP {response.status_code}")
