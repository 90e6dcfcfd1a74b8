"""The configuration contract and its error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from quotagate.config import ConfigError, load_config, missing_secrets, parse_config

CONTRACT = """
server: {host: 127.0.0.1, port: 4000}
database: sqlite:///./quotagate.db        # or postgresql://postgres@127.0.0.1:5432/quotagate
redis: null                                # redis://127.0.0.1:6379/0 selects the shared store
master_key: env:QUOTAGATE_MASTER_KEY
tiers:
  free:       {rpm: 60,   rph: 1000,   tpd: 100000}
  paid:       {rpm: 600,  rph: 10000,  tpd: 10000000}
  enterprise: {rpm: 6000, rph: 100000, tpd: 100000000}
models:
  - name: gpt-4o-mini
    deployments:
      - provider: openai                   # any OpenAI-compatible API
        base_url: http://127.0.0.1:9000/v1
        api_key: env:OPENAI_API_KEY
        model: gpt-4o-mini                 # the name at the provider
        rpm: 500                           # the provider's limits for this key
        tpm: 200000
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "quotagate.yaml"
    path.write_text(text)
    return path


def test_the_documented_contract_loads(tmp_path: Path) -> None:
    """The configuration shape promised in the docs validates as written."""
    config = load_config(write(tmp_path, CONTRACT))
    assert config.server.port == 4000
    assert config.tiers["paid"].tph is None and config.tiers["paid"].rph == 10000
    deployment = config.models[0].deployments[0]
    assert (deployment.url, deployment.api_key, deployment.rpm, deployment.tpm) == (
        "http://127.0.0.1:9000/v1",
        "env:OPENAI_API_KEY",
        500,
        200000,
    )


def test_example_config_in_the_repository_loads() -> None:
    """quotagate.example.yaml stays valid."""
    load_config(Path(__file__).parents[2] / "quotagate.example.yaml")


def test_provider_default_base_url() -> None:
    """Known providers need no base_url."""
    config = parse_config({"models": [{"name": "ds", "deployments": [{"provider": "deepseek", "api_key": "env:DS"}]}]})
    assert config.models[0].deployments[0].url == "https://api.deepseek.com/v1"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"master_key": "sk-plain-secret"}, "master_key: secrets are not written in the config"),
        (
            {"models": [{"name": "m", "deployments": [{"base_url": "http://x/v1", "api_key": "sk-123"}]}]},
            "models[m].deployments[0].api_key: secrets are not written",
        ),
        ({"tiers": {"free": {"rpm": -5}}}, "tiers.free.rpm: Input should be greater than 0"),
        ({"tiers": {"free": {"rpmm": 5}}}, "tiers.free.rpmm: Extra inputs are not permitted"),
        ({"tiers": {}}, "tiers: at least one tier is needed"),
        ({"database": "mysql://x"}, "database: must be sqlite:///PATH or postgresql://"),
        ({"redis": "http://x"}, "redis: must be redis://"),
        ({"server": {"port": 70000}}, "server.port: Input should be less than or equal to 65535"),
        (
            {"models": [{"name": "m", "deployments": []}]},
            "models[m]: model 'm' needs deployments (or a route, for a routed model)",
        ),
        (
            {"models": [{"name": "m", "deployments": [{"provider": "vllm"}]}]},
            "base_url is required for provider 'vllm'",
        ),
        (
            {"models": [{"name": "m", "deployments": [{"provider": "nope", "base_url": "http://x"}]}]},
            "models[m].deployments[0].provider: Input should be",
        ),
        (
            {
                "models": [
                    {"name": "m", "deployments": [{"base_url": "http://x"}]},
                    {"name": "m", "deployments": [{"base_url": "http://y"}]},
                ]
            },
            "model 'm' is defined twice",
        ),
        # Accepted once and used for nothing: a setting that does nothing is an error now.
        (
            {"models": [{"name": "m", "deployments": [{"base_url": "http://x", "region": "eu"}]}]},
            "models[m].deployments[0].region: Extra inputs are not permitted",
        ),
        (
            {"models": [{"name": "m", "deployments": [{"base_url": "http://x", "rpm": 10, "burst": 11}]}]},
            "burst (11) cannot exceed rpm (10)",
        ),
        ({"router": {"max_queue_wait": -1}}, "router.max_queue_wait: Input should be greater than or equal to 0"),
        # Limits no engine can hold: a budget that overflows micro-dollars or rounds to none, counts
        # past what Redis's Lua numbers hold exactly (before, they loaded and every request was a 500).
        (
            {"tiers": {"free": {"usd_per_day": 1e308}}},
            "tiers.free.usd_per_day: a budget must be between 0.000001 and 1000000000 USD",
        ),
        (
            {"tiers": {"free": {"usd_per_month": 1e-300}}},
            "tiers.free.usd_per_month: a budget must be between 0.000001 and 1000000000 USD",
        ),
        ({"tiers": {"free": {"usd_per_day": float("nan")}}}, "tiers.free.usd_per_day: Input should be a finite number"),
        ({"tiers": {"free": {"tpm": 2**63}}}, "tiers.free.tpm: Input should be less than or equal to 1000000000000000"),
        (
            {"limits": [{"scope": "user", "unit": "usd", "amount": 1e-300, "per": "day"}]},
            "limits[0].amount: a budget must be between 0.000001 and 1000000000 USD",
        ),
        (
            {"limits": [{"scope": "global", "unit": "tokens", "amount": 1e300, "name": "all"}]},
            "limits[all].amount: must be at most 1,000,000,000,000,000 tokens",
        ),
        (
            {"limits": [{"scope": "global", "unit": "requests", "amount": float("inf")}]},
            "limits[0].amount: Input should be a finite number",
        ),
        (
            {"limits": [{"scope": "global", "unit": "requests", "amount": 10, "burst": 2**60}]},
            "limits[0].burst: Input should be less than or equal to 1000000000000000",
        ),
        (
            {"models": [{"name": "m", "deployments": [{"base_url": "http://x", "tpm": 10**16}]}]},
            "models[m].deployments[0].tpm: Input should be less than or equal to 1000000000000000",
        ),
    ],
)
def test_invalid_config_names_field_and_problem(data: dict[str, object], expected: str) -> None:
    """Each mistake is reported with the field's path and what is wrong, not a traceback."""
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert expected in str(caught.value)


def test_file_problems_are_config_errors(tmp_path: Path) -> None:
    """A missing file, bad YAML or a non-mapping document are clear errors."""
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "tiers: [unclosed"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_missing_secrets_are_listed(tmp_path: Path) -> None:
    """Every env:NAME that the environment lacks is named."""
    config = load_config(write(tmp_path, CONTRACT))
    problems = missing_secrets(config, environ={"QUOTAGATE_MASTER_KEY": "m"})
    assert problems == ["models[gpt-4o-mini].deployments[0].api_key: environment variable OPENAI_API_KEY is not set"]
    assert missing_secrets(config, environ={"QUOTAGATE_MASTER_KEY": "m", "OPENAI_API_KEY": "k"}) == []


ROUTING_CONTRACT = """
models:
  - name: gpt-4.1
    routing: usage-based            # or weighted, least-busy, latency-based
    context_window: 128000
    fallbacks: [claude-sonnet-4.5, deepseek-v3.2]
    context_window_fallback: gemini-2.5-flash
    deployments:
      - {provider: openai, base_url: https://api.openai.com/v1, api_key: env:OPENAI_KEY_A, model: gpt-4.1, rpm: 500, tpm: 120000, weight: 2, priority: 0}
      - {provider: openai, base_url: https://relay.example/v1, api_key: env:RELAY_KEY, model: gpt-4.1, rpm: 3000, tpm: 800000, priority: 1}
  - {name: claude-sonnet-4.5, deployments: [{provider: anthropic, api_key: env:ANTHROPIC_KEY}]}
  - {name: deepseek-v3.2, deployments: [{provider: deepseek, api_key: env:DEEPSEEK_KEY, model: deepseek-chat}]}
  - {name: gemini-2.5-flash, deployments: [{provider: gemini, api_key: env:GEMINI_KEY}]}
"""


def test_the_routing_contract_loads(tmp_path: Path) -> None:
    """The routing configuration promised for deployments, fallbacks and context windows validates."""
    config = load_config(write(tmp_path, ROUTING_CONTRACT))
    model = config.models[0]
    assert (model.routing, model.context_window, model.fallbacks, model.context_window_fallback) == (
        "usage-based",
        128000,
        ["claude-sonnet-4.5", "deepseek-v3.2"],
        "gemini-2.5-flash",
    )
    assert [(d.rpm, d.tpm, d.weight, d.priority) for d in model.deployments] == [
        (500, 120000, 2, 0),
        (3000, 800000, 1.0, 1),
    ]


def test_unknown_fallback_is_refused() -> None:
    """A fallback to a model that is not configured is a configuration error."""
    with pytest.raises(ConfigError, match="falls back to 'nope', which is not configured"):
        parse_config({"models": [{"name": "m", "fallbacks": ["nope"], "deployments": [{"base_url": "http://x"}]}]})


def test_a_config_file_with_bad_limits_names_the_field(tmp_path: Path) -> None:
    """A file whose tier budget and scoped limit are out of bounds fails to load, naming both."""
    path = tmp_path / "quotagate.yaml"
    path.write_text(
        "tiers: {free: {usd_per_day: 1e308, rpm: 60}}\nlimits: [{scope: user, unit: usd, amount: .inf, per: month}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (
        "invalid configuration:\n"
        "  tiers.free.usd_per_day: a budget must be between 0.000001 and 1000000000 USD\n"
        "  limits[0].amount: Input should be a finite number"
    )


def test_the_cache_contract_loads(tmp_path: Path) -> None:
    """The shape issue 20 promises works as written."""
    config = load_config(
        write(
            tmp_path,
            """
cache:
  store: memory
  embedding: local
tiers:
  paid:
    rpm: 600
    cache: {mode: semantic, ttl: 3600, namespace: user, threshold: 0.92}
""",
        )
    )
    rule = config.tiers["paid"].cache
    assert rule is not None and (rule.mode, rule.ttl, rule.namespace, rule.threshold) == (
        "semantic",
        3600,
        "user",
        0.92,
    )
    assert (config.cache.store, config.cache.embedding) == ("memory", "local")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("cache: {store: redis}", "cache.store: redis needs the gateway's redis: URL"),
        ("cache: {embedding: nowhere}", "cache.embedding 'nowhere' is neither 'local' nor the name of a model"),
        ("tiers: {free: {cache: {mode: fuzzy}}}", "tiers.free.cache.mode"),
        ("tiers: {free: {cache: {threshold: 1.5}}}", "tiers.free.cache.threshold"),
        ("tiers: {free: {cache: {namespace: team}}}", "tiers.free.cache.namespace"),
    ],
)
def test_cache_settings_that_cannot_work_name_their_field(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert problem in str(caught.value)


def test_a_proxy_password_is_never_written_in_the_file() -> None:
    """A deployment's proxy with user:password is refused without echoing it; env:NAME takes it."""
    deployment = {"base_url": "http://x", "proxy": "http://alice:s3cret@proxy.example:3128"}
    with pytest.raises(ConfigError) as caught:
        parse_config({"models": [{"name": "m", "deployments": [deployment]}]})
    assert "proxy: env:NAME" in str(caught.value) and "s3cret" not in str(caught.value)
    config = parse_config({"models": [{"name": "m", "deployments": [{**deployment, "proxy": "env:CORP_PROXY"}]}]})
    assert config.models[0].deployments[0].proxy == "env:CORP_PROXY"


@pytest.mark.parametrize("name", ["", "x" * 101, "a\nb", " lead", "(none)"])
def test_a_team_name_a_report_or_the_database_could_not_hold_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="team name"):
        parse_config({"teams": {name: {"rpm": 1}}})
