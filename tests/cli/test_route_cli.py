"""`quotagate route explain`: which class and model a routed model gives a prompt, and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from quotagate.cli import app

from ..tiering.contract import SERVED, routed_model

runner = CliRunner()

_AUTO = routed_model()
# Over 300 tokens (past the simple class's rule), about returns throughout: the embedding model
# reads a message's first 2,000 characters.
_LONG_RETURN = " ".join(
    ["I would like to send back something I ordered from your store. How do I return an item?"] * 25
)


def _served(name: str) -> dict[str, object]:
    # Never called: explain sends nothing to a provider.
    deployment = {"provider": "openai-compatible", "base_url": "http://127.0.0.1:9/v1", "api_key": "env:ROUTE_KEY"}
    return {"name": name, "deployments": [{**deployment, "model": name}]}


def _write(tmp_path: Path, models: list[dict[str, object]], **more: object) -> Path:
    path = tmp_path / "route.yaml"
    document = {
        "database": f"sqlite:///{tmp_path / 'q.db'}",
        "models": [*(_served(name) for name in SERVED), *models],
        "tiers": {"free": {"on_limit": {"downgrade": "gemini-2.5-flash"}}, "paid": {}},
        "limits": [
            {
                "scope": "key+model",
                "unit": "tokens",
                "amount": 20000,
                "per": "minute",
                "match": {"model": ["claude-sonnet-4.5"]},
            }
        ],
        **more,
    }
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    return path


@pytest.fixture
def contract(tmp_path: Path) -> Path:
    return _write(tmp_path, [_AUTO])


def _explain(config: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["route", "explain", "-c", str(config), *args], terminal_width=200)
    return result.exit_code, result.output


def _json(config: Path, prompt: str, *args: str) -> dict[str, object]:
    code, output = _explain(config, "--json", *args, prompt)
    assert code == 0, output
    answer: dict[str, object] = json.loads(output)
    return answer


def test_a_why_question_goes_to_the_complex_class_by_its_keyword_rule(contract: Path) -> None:
    """The table names the routed model, the class, its model, the move-up chain and the rule."""
    code, output = _explain(contract, "Why was my order cancelled?")
    assert code == 0, output
    lines = dict(line.split(":", 1) for line in output.strip().splitlines())
    assert {label: value.strip() for label, value in lines.items()} == {
        "routed model": "auto",
        "class": "complex",
        "model": "claude-sonnet-4.5",
        "move-up chain": "claude-sonnet-4.5",
        "why": "rule: keywords",
        "detail": "keywords 'Why'",
    }


def test_a_short_chinese_question_goes_to_the_simple_class_by_its_size(contract: Path) -> None:
    """No keyword of the complex class: the short prompt meets the simple class's token bound."""
    answer = _json(contract, "你们用什么快递？")  # noqa: RUF001
    assert (answer["route_class"], answer["model"], answer["reason"]) == (
        "simple",
        "gemini-2.5-flash",
        "rule: prompt_tokens",
    )
    assert answer["models"] == ["gemini-2.5-flash", "deepseek-v3.2", "claude-sonnet-4.5"]
    assert str(answer["detail"]).startswith("prompt_tokens ") and str(answer["detail"]).endswith(" <= 300")


def test_a_long_routine_question_goes_to_the_routine_class_by_its_example(contract: Path) -> None:
    """Past every rule, the nearest example decides: the routine class, by semantic similarity."""
    answer = _json(contract, _LONG_RETURN)
    assert (answer["routed"], answer["route_class"], answer["model"]) == ("auto", "routine", "deepseek-v3.2")
    assert answer["models"] == ["deepseek-v3.2", "claude-sonnet-4.5"]
    assert answer["strongest"] == "claude-sonnet-4.5"
    assert str(answer["reason"]).startswith("semantic ")
    assert "'How do I return an item?'" in str(answer["detail"])
    assert (answer["tier"], answer["key_id"]) == ("free", "explain")


def test_rules_on_tiers_and_keys_see_the_caller_given(tmp_path: Path) -> None:
    """--tier and --key-id make the caller, whom tier and key rules read; no examples, no model loaded."""
    routed = {
        "name": "auto",
        "route": {
            "classes": [
                {"name": "cheap", "model": "gemini-2.5-flash", "rules": {"tiers": ["free"]}},
                {"name": "vip", "model": "claude-sonnet-4.5", "rules": {"keys": ["key_vip"]}},
            ]
        },
    }
    config = _write(tmp_path, [routed])
    assert _json(config, "hello")["route_class"] == "cheap"  # the first tier, free
    paid = _json(config, "hello", "--tier", "paid")
    assert (paid["route_class"], paid["reason"], paid["detail"]) == ("vip", "default", "no rule matched")
    assert _json(config, "hello", "--tier", "paid", "--key-id", "key_vip")["route_class"] == "vip"
    assert _json(config, "hello", "--tier", "paid", "--key-id", "key_vip")["reason"] == "rule: key"


@pytest.mark.parametrize(
    ("models", "args", "message"),
    [
        ([], [], "the configuration has no routed model"),
        ([_AUTO, {**_AUTO, "name": "auto-2"}], [], "several routed models (auto, auto-2): choose one with --model"),
        ([_AUTO], ["--model", "gpt-9"], "no model named 'gpt-9'"),
        ([_AUTO], ["--model", "deepseek-v3.2"], "'deepseek-v3.2' is not a routed model"),
        ([_AUTO], ["--tier", "gold"], "no tier named 'gold'"),
    ],
)
def test_a_wrong_model_or_tier_is_an_error(
    tmp_path: Path, models: list[dict[str, object]], args: list[str], message: str
) -> None:
    """What to classify must be clear: a routed model of the configuration, and one of its tiers."""
    code, output = _explain(_write(tmp_path, models), *args, "hello")
    assert code == 1
    assert output.startswith("error: ") and message in " ".join(output.split()), output


def test_examples_with_an_embeddings_model_of_the_config_are_a_usage_error(tmp_path: Path) -> None:
    """explain has only the local embedding model: it says so (exit 2) rather than guess a class."""
    config = _write(tmp_path, [_AUTO, _served("text-embedding-3-small")], cache={"embedding": "text-embedding-3-small"})
    code, output = _explain(config, "Why was my order cancelled?")
    assert code == 2
    text = " ".join(output.split())
    assert "explain needs the local embedding model" in text and "running gateway" in text, output


def test_route_commands_have_help() -> None:
    """`quotagate --help` lists route, and `route --help` lists explain."""
    top = runner.invoke(app, ["--help"], terminal_width=120)
    assert top.exit_code == 0 and "route" in top.output and "routed model" in top.output
    group = runner.invoke(app, ["route", "--help"], terminal_width=120)
    assert group.exit_code == 0 and "explain" in group.output
    command = runner.invoke(app, ["route", "explain", "--help"], terminal_width=120)
    assert command.exit_code == 0
    assert all(option in command.output for option in ("--model", "--tier", "--key-id", "--json", "--config"))
