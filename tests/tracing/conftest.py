from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..conftest import ServerThread
from .collector import Collector


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    """A collector in the test process, and the OTLP/HTTP endpoint it listens at."""
    app = Collector()
    server = ServerThread(app).start()
    yield app, server.url + "/v1/traces"
    server.stop()
