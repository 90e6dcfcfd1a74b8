"""The tracing: section, checked at the edge: bad values refused with messages that say what to do."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from quotagate.config import ConfigError, missing_secrets, parse_config
from quotagate.config._reload import RESTART_ONLY
from quotagate.tracing import start_tracing


def tracing(**settings: Any) -> Any:
    return parse_config({"tracing": settings}).tracing


def refused(**settings: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        tracing(**settings)
    return str(caught.value)


def test_tracing_is_off_by_default_and_then_nothing_is_built() -> None:
    """With no tracing: section tracing is off, towards a local collector, and start_tracing gives None."""
    settings = parse_config({}).tracing
    assert (settings.enabled, settings.endpoint, settings.sample_ratio) == (
        False,
        "http://127.0.0.1:4318/v1/traces",
        1.0,
    )
    assert start_tracing(settings) is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"endpoint": "127.0.0.1:4318"}, "must be an http:// or https:// URL"),
        ({"endpoint": "grpc://collector:4317"}, "must be an http:// or https:// URL"),
        ({"endpoint": "https://user:pw@collector/v1/traces"}, "credentials do not go in the URL"),
        ({"sample_ratio": 1.5}, "less than or equal to 1"),
        ({"sample_ratio": -0.1}, "greater than or equal to 0"),
        ({"timeout_seconds": 0}, "greater than 0"),
        ({"service_name": ""}, "at least 1 character"),
        (
            {"headers": {"Authorization": "Bearer abc"}},
            "header Authorization: a credential is not written in the config",
        ),
        ({"headers": {"x-api-key": "abc"}}, "reference an environment variable as env:NAME"),
        ({"headers": {"x-tenant": "env:not a name"}}, "header x-tenant: a credential is not written"),
        ({"headers": {"bad header": "x"}}, "'bad header' is not an HTTP header name"),
        ({"headers": {"x-tenant": "a\r\nb"}}, "cannot hold a line break"),
        ({"sample": 0.5}, "Extra inputs are not permitted"),
    ],
)
def test_bad_tracing_settings_are_refused_with_the_field_and_what_is_wrong(
    settings: dict[str, Any], message: str
) -> None:
    """Each bad value is refused naming tracing's field and the problem (a secret never echoed)."""
    problem = refused(**settings)
    assert "tracing" in problem and message in problem
    assert "Bearer abc" not in problem and "pw@" not in problem


def test_a_header_whose_variable_is_not_set_fails_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """An env:NAME header value whose variable is missing fails at start, naming the header and the variable."""
    monkeypatch.delenv("QG_TEST_NO_SUCH_TOKEN", raising=False)
    settings = tracing(enabled=True, headers={"Authorization": "env:QG_TEST_NO_SUCH_TOKEN"})
    with pytest.raises(
        ConfigError, match=r"tracing\.headers\.Authorization: environment variable QG_TEST_NO_SUCH_TOKEN"
    ):
        start_tracing(settings)


def test_tracing_without_opentelemetry_installed_fails_the_start_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Enabled without OpenTelemetry's SDK: a start-up error naming the extra to install."""
    monkeypatch.delitem(sys.modules, "quotagate.tracing._otel", raising=False)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'quotagate\[otel\]'"):
        start_tracing(tracing(enabled=True))


def test_export_header_secrets_are_checked_before_start_and_tracing_waits_for_a_restart() -> None:
    """A tracing header's env:NAME that is not set is listed with the other missing secrets (only
    when tracing is on); a reload does not pretend to change tracing."""
    config = parse_config({"tracing": {"enabled": True, "headers": {"authorization": "env:QG_TEST_OTLP_TOKEN"}}})
    assert missing_secrets(config, environ={}) == [
        "tracing.headers.authorization: environment variable QG_TEST_OTLP_TOKEN is not set"
    ]
    assert missing_secrets(config, environ={"QG_TEST_OTLP_TOKEN": "t"}) == []
    off = parse_config({"tracing": {"enabled": False, "headers": {"authorization": "env:QG_TEST_OTLP_TOKEN"}}})
    assert missing_secrets(off, environ={}) == []
    assert "tracing" in RESTART_ONLY
