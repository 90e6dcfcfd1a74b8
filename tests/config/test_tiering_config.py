"""Model tiering's configuration (issue 21): routed models, their classes and rules, and on_limit
downgrades; every mistake is an error naming the field and the problem."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from quotagate.cli import app
from quotagate.config import ConfigError, RouteRules, parse_config

from ..tiering.contract import SERVED
from ..tiering.contract import contract as issue_contract


def contract() -> dict[str, Any]:
    """The issue's configuration, with the served models' deployments."""
    data = issue_contract()
    served = [
        {"name": name, "deployments": [{"provider": "openai-compatible", "base_url": "http://127.0.0.1:9000/v1"}]}
        for name in SERVED
    ]
    data["models"] = [*served, *data["models"]]
    return data


def test_the_contract_is_valid() -> None:
    """The issue's configuration validates as written: classes cheapest first, rules as given."""
    config = parse_config(contract())
    auto = config.model_named("auto")
    assert auto is not None and auto.route is not None and auto.deployments == []
    route = auto.route
    assert [(c.name, c.model) for c in route.classes] == [
        ("simple", "gemini-2.5-flash"),
        ("routine", "deepseek-v3.2"),
        ("complex", "claude-sonnet-4.5"),
    ]
    assert (route.default_class, route.min_similarity) == ("routine", 0.3)
    # One set of rules is a list of one set: a request meeting every rule of it gets the class.
    (simple,), (complex_,) = route.classes[0].rules, route.classes[2].rules
    assert isinstance(simple, RouteRules) and simple.max_prompt_tokens == 300
    assert isinstance(complex_, RouteRules) and complex_.keywords == ["why", "为什么"]
    assert route.classes[1].rules == [] and route.classes[1].examples == ["How do I return an item?"]


def test_the_default_class_is_the_strongest() -> None:
    """Without `default`, a request nothing decides gets the strongest class."""
    data = contract()
    del data["models"][3]["route"]["default"]
    route = parse_config(data).models[3].route
    assert route is not None and route.default_class == "complex"


def _class(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in data["models"][3]["route"]["classes"] if c["name"] == name)


def _model(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in data["models"] if m["name"] == name)


def _routed_second(data: dict[str, Any]) -> None:
    data["models"].append({"name": "auto-2", "route": {"classes": [{"name": "only", "model": "deepseek-v3.2"}]}})
    _class(data, "simple")["model"] = "auto-2"


def _cycle(data: dict[str, Any]) -> None:
    _model(data, "claude-sonnet-4.5")["on_limit"] = {"downgrade": "deepseek-v3.2"}
    _model(data, "deepseek-v3.2")["on_limit"] = {"downgrade": "claude-sonnet-4.5"}


# What is changed in the contract, and what the error must say (the field, then the problem).
MISTAKES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "class model unknown": (
        lambda d: _class(d, "simple").update(model="gemini-9"),
        "models[auto].route.classes[simple].model: 'gemini-9' is not a model of this configuration",
    ),
    "class model routed": (
        _routed_second,
        "models[auto].route.classes[simple].model: 'auto-2' is a routed model; name a served one",
    ),
    "empty examples": (
        lambda d: _class(d, "routine").update(examples=[]),
        "models[auto].route.classes[routine].examples: an empty example set",
    ),
    "empty rules": (
        lambda d: _class(d, "routine").update(rules={}),
        "models[auto].route.classes[routine].rules: rules: {} would match every request",
    ),
    "min above max tokens": (
        lambda d: _class(d, "simple").update(rules={"min_prompt_tokens": 500, "max_prompt_tokens": 300}),
        "models[auto].route.classes[simple].rules: min_prompt_tokens (500) is above max_prompt_tokens (300)",
    ),
    "min above max turns": (
        lambda d: _class(d, "simple").update(rules={"min_turns": 3, "max_turns": 1}),
        "models[auto].route.classes[simple].rules: min_turns (3) is above max_turns (1)",
    ),
    "bad regex": (
        lambda d: _class(d, "complex").update(rules={"regex": ["order #(\\d+"]}),
        "models[auto].route.classes[complex].rules.regex: 'order #(\\\\d+' is not a regular expression",
    ),
    "unknown rule": (
        lambda d: _class(d, "complex").update(rules={"keyword": ["why"]}),
        "models[auto].route.classes[complex].rules.keyword: Extra inputs are not permitted",
    ),
    "duplicate class": (
        lambda d: _class(d, "complex").update(name="simple"),
        "models[auto].route: class 'simple' is defined twice",
    ),
    "default not a class": (
        lambda d: d["models"][3]["route"].update(default="medium"),
        "models[auto].route: default 'medium' is not one of the classes (simple, routine, complex)",
    ),
    "routed with deployments": (
        lambda d: d["models"][3].update(deployments=copy.deepcopy(d["models"][0]["deployments"])),
        "models[auto]: model 'auto' is routed: its classes' models have the deployments, not it",
    ),
    "routed with fallbacks": (
        lambda d: d["models"][3].update(fallbacks=["deepseek-v3.2"]),
        "models[auto]: model 'auto' is routed: its classes' models have the fallbacks, not it",
    ),
    "routed with on_limit": (
        lambda d: d["models"][3].update(on_limit={"downgrade": "gemini-2.5-flash"}),
        "models[auto]: model 'auto' is routed: its classes' models have the on_limit, not it",
    ),
    "neither deployments nor route": (
        lambda d: _model(d, "deepseek-v3.2").pop("deployments"),
        "models[deepseek-v3.2]: model 'deepseek-v3.2' needs deployments (or a route, for a routed model)",
    ),
    "downgrade unknown": (
        lambda d: d["tiers"]["free"].update(on_limit={"downgrade": "gemini-9"}),
        "tiers.free.on_limit.downgrade: 'gemini-9' is not a model of this configuration",
    ),
    "downgrade routed": (
        lambda d: _model(d, "claude-sonnet-4.5").update(on_limit={"downgrade": "auto"}),
        "models[claude-sonnet-4.5].on_limit.downgrade: 'auto' is a routed model; name a served one",
    ),
    "downgrade cycle": (
        _cycle,
        "on_limit: a cycle of downgrades: deepseek-v3.2 -> claude-sonnet-4.5 -> deepseek-v3.2",
    ),
    "fallback routed": (
        lambda d: _model(d, "deepseek-v3.2").update(fallbacks=["auto"]),
        "model 'deepseek-v3.2' falls back to 'auto', a routed model",
    ),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_mistake_names_its_field(mistake: str) -> None:
    """Each tiering mistake is refused with the field's path and what is wrong with it."""
    change, expected = MISTAKES[mistake]
    data = contract()
    change(data)
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    assert expected in str(raised.value)


def test_config_check_names_a_routing_mistake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`quotagate config check` accepts the contract and names a class's unknown model, no traceback."""
    for name in ("QUOTAGATE_MASTER_KEY", "GEMINI_API_KEY", "DEEPSEEK_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.setenv(name, "sk-test")
    runner = CliRunner()
    good = tmp_path / "quotagate.yaml"
    good.write_text(yaml.safe_dump(contract(), allow_unicode=True))
    ok = runner.invoke(app, ["config", "check", str(good)])
    assert ok.exit_code == 0, ok.output
    assert "OK (1 tiers, 4 models, 3 deployments" in ok.output
    bad = tmp_path / "bad.yaml"
    mistaken = contract()
    mistaken["models"][-1]["route"]["classes"][1]["model"] = "deepseek-v9"
    bad.write_text(yaml.safe_dump(mistaken, allow_unicode=True))
    result = runner.invoke(app, ["config", "check", str(bad)])
    assert result.exit_code == 1
    assert (
        "models[auto].route.classes[routine].model: 'deepseek-v9' is not a model of this configuration" in result.output
    )
    assert "Traceback" not in result.output


def test_a_limit_on_a_routed_model_is_refused() -> None:
    """A limit matching the routed name would never apply (its requests are charged to the
    classes' models): the configuration says so instead of ignoring it."""
    data = contract()
    data.setdefault("limits", []).append(
        {"scope": "key+model", "unit": "requests", "amount": 5, "match": {"model": ["auto"]}}
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert "limits[1].match.model: 'auto' is a routed model" in str(caught.value)
